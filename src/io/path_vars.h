// "${name}" in a recipe path expands to $VADAPT_<NAME>_DIR; defaults: ${shared} = ../shared
// beside the working directory, ${synth} = runs/synth-data. Other names without their
// variable are errors naming it.
#pragma once

#include <string>

namespace vadapt::io {

std::string expand_vars(const std::string& s);

}  // namespace vadapt::io
