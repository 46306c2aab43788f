// The methods by name: one line each in registry.cpp.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "methods/method.h"

namespace vadapt::methods {

std::unique_ptr<Method> create(const std::string& name, const std::string& where = "method");
std::vector<std::string> names();
// Refuses `images` images for one input (`what`: "sample X", "prompt 3") unless the method reads
// several per <image> (Method::multi_image()); the error names the methods that do.
void check_images_per_input(const Method& m, size_t images, const std::string& what, const std::string& unit);
// The first method that recognises `dir` as one of its release folders (e.g. a LLaVA checkpoint).
std::optional<ReleaseFolder> read_release(const std::string& dir, const FolderOverrides& o);

}  // namespace vadapt::methods
