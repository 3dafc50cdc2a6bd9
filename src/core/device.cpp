#include <thread>

#include "bik/device.h"

namespace bik {
DeviceProps cpu_props() {
  DeviceProps p;
  p.name = "cpu";
  p.sm_count = int(std::thread::hardware_concurrency());
  return p;
}
}  // namespace bik
