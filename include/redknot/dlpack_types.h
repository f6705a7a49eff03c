/* The DLPack tensor structs (https://dmlc.github.io/dlpack/latest/c_api.html), version 1.0.
 *
 * redknot passes tensors across its C ABI as DLTensor so that numpy, torch, cupy and any DLPack producer can
 * hand their buffers over without a copy. The definitions below are written from the public specification and
 * are ABI-compatible with the reference dlpack.h, so a caller may include either one first:
 *   - if dlpack.h was included first (it defines DLPACK_DLPACK_H_), this header defines nothing;
 *   - otherwise this header defines DLPACK_DLPACK_H_ itself, so a later #include <dlpack/dlpack.h> is a
 * no-op. Only the parts redknot uses are defined (no DLPACK_DLL / DLPACK_EXTERN_C helpers). */
#ifndef REDKNOT_DLPACK_TYPES_H_
#define REDKNOT_DLPACK_TYPES_H_

#ifndef DLPACK_DLPACK_H_
#define DLPACK_DLPACK_H_

#include <stddef.h>
#include <stdint.h>

#define DLPACK_MAJOR_VERSION 1
#define DLPACK_MINOR_VERSION 0

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
  uint32_t major;
  uint32_t minor;
} DLPackVersion;

typedef enum {
  kDLCPU = 1,
  kDLCUDA = 2,
  kDLCUDAHost = 3, /* pinned host memory: host-accessible */
  kDLOpenCL = 4,
  kDLVulkan = 7,
  kDLMetal = 8,
  kDLVPI = 9,
  kDLROCM = 10,
  kDLROCMHost = 11,
  kDLExtDev = 12,
  kDLCUDAManaged = 13,
  kDLOneAPI = 14,
  kDLWebGPU = 15,
  kDLHexagon = 16
} DLDeviceType;

typedef struct {
  DLDeviceType device_type;
  int32_t device_id;
} DLDevice;

typedef enum {
  kDLInt = 0U,
  kDLUInt = 1U,
  kDLFloat = 2U,
  kDLOpaqueHandle = 3U,
  kDLBfloat = 4U,
  kDLComplex = 5U,
  kDLBool = 6U
} DLDataTypeCode;

typedef struct {
  uint8_t code; /* a DLDataTypeCode */
  uint8_t bits;
  uint16_t lanes;
} DLDataType;

/* strides are in elements, not bytes; strides == NULL means compact row-major. The first element is at
 * (char*)data + byte_offset. */
typedef struct {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
} DLTensor;

typedef struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(struct DLManagedTensor* self);
} DLManagedTensor;

#define DLPACK_FLAG_BITMASK_READ_ONLY (1UL << 0UL)
#define DLPACK_FLAG_BITMASK_IS_COPIED (1UL << 1UL)

typedef struct DLManagedTensorVersioned {
  DLPackVersion version;
  void* manager_ctx;
  void (*deleter)(struct DLManagedTensorVersioned* self);
  uint64_t flags;
  DLTensor dl_tensor;
} DLManagedTensorVersioned;

#ifdef __cplusplus
}  // extern "C"
#endif

#endif /* DLPACK_DLPACK_H_ */
#endif /* REDKNOT_DLPACK_TYPES_H_ */
