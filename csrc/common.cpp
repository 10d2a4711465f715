#include "common.h"

#include <cstdio>

namespace fastgen {

std::string fmt(double v) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.10g", v);
  return buf;
}

}  // namespace fastgen
