// The methods by name: one line each in registry.cpp.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "methods/method.h"

namespace vadapt::methods {

std::unique_ptr<Method> create(const std::string& name, const std::string& where = "method");
std::vector<std::string> names();
// The first method that recognises `dir` as one of its release folders (e.g. a LLaVA checkpoint).
std::optional<ReleaseFolder> read_release(const std::string& dir, const FolderOverrides& o);

}  // namespace vadapt::methods
