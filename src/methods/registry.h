// The methods by name: one line each in registry.cpp.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "methods/method.h"

namespace vadapt::methods {

std::unique_ptr<Method> create(const std::string& name, const std::string& where = "method");
std::vector<std::string> names();

}  // namespace vadapt::methods
