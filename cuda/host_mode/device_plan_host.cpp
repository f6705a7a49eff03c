// Host execution mode build of cuda/device_plan.cpp (against the emulated runtime).
#include "../device_plan.cpp"
