// A diffusers scheduler_config.json, as typed key/value pairs, with validating accessors.
//
// Keys a scheduler does not know are ignored (diffusers does the same, which is what lets one
// pipeline's config build another scheduler class); keys it knows must hold valid values.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <variant>
#include <vector>

namespace fastgen {

class Config {
 public:
  using Value = std::variant<std::monostate, bool, long long, double, std::string, std::vector<double>>;

  void set(const std::string& key, Value v) { values_[key] = std::move(v); }
  bool has(const std::string& key) const;  // present and not null
  const std::map<std::string, Value>& values() const { return values_; }

  bool get_bool(const std::string& key, bool def) const;
  long long get_int(const std::string& key, long long def) const;
  double get_double(const std::string& key, double def) const;
  std::optional<double> get_optional_double(const std::string& key) const;
  std::string get_string(const std::string& key, const std::string& def,
                         const std::vector<std::string>& allowed) const;
  std::optional<std::string> get_optional_string(const std::string& key,
                                                 const std::vector<std::string>& allowed) const;
  std::optional<std::vector<double>> get_list(const std::string& key) const;

 private:
  std::map<std::string, Value> values_;
};

}  // namespace fastgen
