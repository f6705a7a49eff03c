// Where the tools look for a model when none is given: $REDKNOT_MODEL, else the first .gguf under
// $REDKNOT_MODEL_DIR or ~/.cache/redknot/models (where scripts/get-model.sh puts it).
#pragma once

#include <string>

namespace redknot::decoder {

// Empty when nothing is found.
std::string default_model_path();

}  // namespace redknot::decoder
