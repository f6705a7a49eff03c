// Importing Python arrays as DLTensors through the DLPack protocol (numpy >= 1.22, torch, cupy, jax, ...).
//
// The consumer side of the protocol: ask the object for a capsule with __dlpack__ (DLPack 1.0 "versioned"
// capsules first, the legacy ones as a fallback), mark the capsule used, and call the producer's deleter when
// done. The tensor memory is the producer's own: nothing is copied here.
#pragma once

#include <cstring>

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "redknot/any_store.hpp"
#include "redknot/dlpack_types.h"
#include "redknot/error.hpp"

namespace redknot::py_bindings {

namespace py = pybind11;

class ImportedTensor {
 public:
  // name: the argument name for messages; writable: the call writes into the tensor (out=, lse=).
  ImportedTensor(const py::handle& obj, const char* name, bool writable) : name_(name) {
    if (!py::hasattr(obj, "__dlpack__"))
      throw InvalidArgument(
          detail::concat(name, ": expected an array supporting DLPack (numpy, torch, cupy, ...), got ",
                         std::string(py::str(py::type::of(obj).attr("__name__")))));
    // Check the device first: exporting a device tensor may synchronise streams for nothing.
    if (py::hasattr(obj, "__dlpack_device__")) {
      int type = 0;
      std::int32_t id = 0;
      try {
        const py::tuple dev = obj.attr("__dlpack_device__")();
        type = dev[0].cast<int>();
        id = dev[1].cast<std::int32_t>();
      } catch (const std::exception& e) {  // a Python error, or a result that is not (int, int)
        throw InvalidArgument(detail::concat(name, ".__dlpack_device__() failed: ", e.what()));
      }
      if (type != kDLCPU && type != kDLCUDAHost) {
        // The producer's integer may be outside DLDeviceType: store its bytes, never cast it to the enum.
        DLDevice dev{kDLCPU, id};
        const std::int32_t type32 = type;
        std::memcpy(&dev.device_type, &type32, sizeof type32);
        throw InvalidArgument(detail::concat(
            name, " is on device ", device_name(dev),
            ", but this store lives on the cpu: pass a host array (CUDA stores are not available yet)"));
      }
    }
    // The producer refuses some arrays (numpy: strings, objects, datetimes, ...): that is the argument's
    // fault.
    py::object cap;
    try {
      try {
        cap = obj.attr("__dlpack__")(py::arg("max_version") = py::make_tuple(1, 0));
      } catch (py::error_already_set& e) {
        if (!e.matches(PyExc_TypeError)) throw;
        cap = obj.attr("__dlpack__")();  // a producer that predates DLPack 1.0
      }
    } catch (py::error_already_set& e) {
      throw InvalidArgument(detail::concat(name, " cannot be exported through DLPack: ", e.what()));
    }
    PyObject* c = cap.ptr();
    if (PyCapsule_IsValid(c, "dltensor_versioned")) {
      versioned_ = static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(c, "dltensor_versioned"));
      PyCapsule_SetName(c, "used_dltensor_versioned");
      tensor_ = &versioned_->dl_tensor;
      if (writable && (versioned_->flags & DLPACK_FLAG_BITMASK_READ_ONLY)) {
        release();
        throw InvalidArgument(detail::concat(name, " is read-only, but the result is written into it"));
      }
    } else if (PyCapsule_IsValid(c, "dltensor")) {
      legacy_ = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(c, "dltensor"));
      PyCapsule_SetName(c, "used_dltensor");
      tensor_ = &legacy_->dl_tensor;
    } else {
      throw InvalidArgument(detail::concat(name, ".__dlpack__() did not return a DLPack capsule"));
    }
  }
  ~ImportedTensor() { release(); }
  ImportedTensor(const ImportedTensor&) = delete;
  ImportedTensor& operator=(const ImportedTensor&) = delete;

  const DLTensor& tensor() const { return *tensor_; }
  const DLTensor* get() const { return tensor_; }

 private:
  // Deleters may touch Python objects: the GIL must be held (callers release it only around the compute).
  void release() {
    if (versioned_ && versioned_->deleter) versioned_->deleter(versioned_);
    if (legacy_ && legacy_->deleter) legacy_->deleter(legacy_);
    versioned_ = nullptr;
    legacy_ = nullptr;
    tensor_ = nullptr;
  }

  std::string name_;
  DLManagedTensorVersioned* versioned_ = nullptr;
  DLManagedTensor* legacy_ = nullptr;
  DLTensor* tensor_ = nullptr;
};

}  // namespace redknot::py_bindings
