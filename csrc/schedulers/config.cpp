#include "schedulers/config.h"

#include <cmath>

#include "common.h"

namespace fastgen {

namespace {
std::string type_name(const Config::Value& v) {
  switch (v.index()) {
    case 0: return "null";
    case 1: return "a bool";
    case 2: return "an int";
    case 3: return "a float";
    case 4: return "a string";
    default: return "a list";
  }
}
[[noreturn]] void bad_type(const std::string& key, const Config::Value& v, const char* want) {
  throw ConfigError("scheduler config '" + key + "' must be " + want + ", got " + type_name(v));
}
std::string join(const std::vector<std::string>& xs) {
  std::string s;
  for (size_t i = 0; i < xs.size(); ++i) s += (i ? ", '" : "'") + xs[i] + "'";
  return s;
}
}  // namespace

bool Config::has(const std::string& key) const {
  auto it = values_.find(key);
  return it != values_.end() && it->second.index() != 0;
}

bool Config::get_bool(const std::string& key, bool def) const {
  if (!has(key)) return def;
  const auto& v = values_.at(key);
  if (auto b = std::get_if<bool>(&v)) return *b;
  bad_type(key, v, "a bool");
}

long long Config::get_int(const std::string& key, long long def) const {
  if (!has(key)) return def;
  const auto& v = values_.at(key);
  if (auto i = std::get_if<long long>(&v)) return *i;
  if (auto d = std::get_if<double>(&v)) {
    if (std::isfinite(*d) && std::floor(*d) == *d) return static_cast<long long>(*d);
  }
  bad_type(key, v, "an integer");
}

double Config::get_double(const std::string& key, double def) const {
  auto o = get_optional_double(key);
  return o ? *o : def;
}

std::optional<double> Config::get_optional_double(const std::string& key) const {
  if (!has(key)) return std::nullopt;
  const auto& v = values_.at(key);
  double d;
  if (auto i = std::get_if<long long>(&v)) d = static_cast<double>(*i);
  else if (auto f = std::get_if<double>(&v)) d = *f;
  else bad_type(key, v, "a number");
  if (!std::isfinite(d)) throw ConfigError("scheduler config '" + key + "' must be finite, got " + fmt(d));
  return d;
}

std::string Config::get_string(const std::string& key, const std::string& def,
                               const std::vector<std::string>& allowed) const {
  auto o = get_optional_string(key, allowed);
  return o ? *o : def;
}

std::optional<std::string> Config::get_optional_string(const std::string& key,
                                                       const std::vector<std::string>& allowed) const {
  if (!has(key)) return std::nullopt;
  const auto& v = values_.at(key);
  auto s = std::get_if<std::string>(&v);
  if (!s) bad_type(key, v, "a string");
  if (!allowed.empty()) {
    bool ok = false;
    for (const auto& a : allowed) ok = ok || (a == *s);
    if (!ok) throw ConfigError("scheduler config '" + key + "' = '" + *s + "' is not supported; expected one of " + join(allowed));
  }
  return *s;
}

std::optional<std::vector<double>> Config::get_list(const std::string& key) const {
  if (!has(key)) return std::nullopt;
  const auto& v = values_.at(key);
  if (auto l = std::get_if<std::vector<double>>(&v)) return *l;
  bad_type(key, v, "a list of numbers");
}

}  // namespace fastgen
