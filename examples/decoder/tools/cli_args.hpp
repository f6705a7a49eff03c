// Minimal "--name value" / "--flag" argument parsing shared by the decoder tools.
#pragma once

#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace redknot::decoder {

class CliArgs {
 public:
  // `flags` take no value; every other --name takes the next argument.
  CliArgs(int argc, char** argv, std::set<std::string> flags) {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a.rfind("--", 0) != 0) throw std::invalid_argument("unexpected argument '" + a + "'");
      a.erase(0, 2);
      if (auto eq = a.find('='); eq != std::string::npos) {
        values_[a.substr(0, eq)] = a.substr(eq + 1);
      } else if (flags.count(a)) {
        values_[a] = std::string(1, '1');  // not = "1": GCC 12 -Wrestrict false positive at -O3
      } else {
        if (i + 1 >= argc) throw std::invalid_argument("--" + a + " needs a value");
        values_[a] = argv[++i];
      }
    }
  }
  bool has(const std::string& k) const { return values_.count(k) != 0; }
  std::string get(const std::string& k, const std::string& fallback = "") const {
    auto it = values_.find(k);
    return it == values_.end() ? fallback : it->second;
  }
  int get_int(const std::string& k, int fallback) const { return has(k) ? std::stoi(get(k)) : fallback; }
  double get_double(const std::string& k, double fallback) const {
    return has(k) ? std::stod(get(k)) : fallback;
  }

 private:
  std::map<std::string, std::string> values_;
};

// The non-empty items of a comma-separated list ("a,b,,c" -> a, b, c).
inline std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string x; std::getline(ss, x, ',');)
    if (!x.empty()) out.push_back(x);
  return out;
}

}  // namespace redknot::decoder
