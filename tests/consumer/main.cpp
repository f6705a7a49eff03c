// Downstream smoke test: compiled against an *installed* redknot.
#include <redknot/redknot.hpp>

#include <iostream>

int main() {
  std::cout << "redknot " << redknot::version_string() << '\n';
  return 0;
}
