// The _redknot extension module: pybind11 bindings of HeadMap and AnyStore.
//
// This layer stays thin: tensors come in through DLPack (dlpack_import.hpp) and go straight to AnyStore;
// metadata arrays arrive as int32/int64 numpy arrays prepared by the pure-Python wrapper (redknot/_store.py).
// It converts Python objects to C++ values (args.hpp: wrong types and values that do not fit the C type are
// InvalidArgument) and C++ exceptions to RedknotError subclasses; every value rule (ranges, limits, ids, the
// attention parameters) is the core's, so Python rejects exactly what C and C++ reject, with their message.
// The GIL is released around appends and attention so that independent stores run in parallel from Python
// threads.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <vector>

#include "args.hpp"
#include "dlpack_import.hpp"
#include "redknot/any_store.hpp"
#include "redknot/any_tiers.hpp"
#include "redknot/error.hpp"
#include "redknot/flashinfer_csr.hpp"
#include "redknot/head_map.hpp"
#include "redknot/head_table.hpp"
#include "redknot/kv_slice.hpp"
#include "redknot/pool_sizing.hpp"
#include "redknot/recompute.hpp"
#ifdef REDKNOT_HAS_REDIS
#include "redknot/redis_tier.hpp"
#endif
#include "redknot/rope.hpp"
#include "redknot/tiers.hpp"
#include "redknot/version.hpp"

namespace py = pybind11;
using namespace redknot;
using py_bindings::float32_arg;
using py_bindings::float32_array_arg;
using py_bindings::float_arg;
using py_bindings::ImportedTensor;
using py_bindings::int_arg;
using py_bindings::int_array_arg;
using py_bindings::path_arg;
using py_bindings::str_arg;
using py_bindings::type_name;

namespace {

template <class T>
using CArray = py::array_t<T, py::array::c_style>;

template <class T>
std::span<const T> span_of(const CArray<T>& a, const char* name) {
  require(a.ndim() == 1, name, " must be one-dimensional, got ", a.ndim(), " dimensions");
  return {a.data(), static_cast<std::size_t>(a.size())};
}

DLDevice parse_device(const std::string& s) {
  if (s == "cpu") return DLDevice{kDLCPU, 0};
  if (s == "cuda") return DLDevice{kDLCUDA, 0};
  if (s.rfind("cuda:", 0) == 0) {
    try {
      std::size_t used = 0;
      const int id = std::stoi(s.substr(5), &used);
      if (used == s.size() - 5 && id >= 0) return DLDevice{kDLCUDA, id};
    } catch (const std::exception&) {
    }
  }
  throw InvalidArgument(detail::concat("device='", s, "' is not 'cpu', 'cuda' or 'cuda:<index>'"));
}

// Sequence ids are int64 (SeqId).
SeqId seq_arg(const py::handle& h, const char* fn, const char* name) { return int_arg<SeqId>(h, fn, name); }

// An exception class deriving from RedknotError and a builtin; str() shows the message without the quotes
// KeyError would add.
py::object make_exception(py::module_& m, const char* name, const py::object& base, PyObject* builtin,
                          const char* doc) {  // builtin: the standard exception it also derives from
  py::dict ns;
  ns["__doc__"] = doc;
  ns["__module__"] = "redknot";
  ns["__str__"] = py::module_::import("builtins").attr("BaseException").attr("__str__");
  const py::tuple bases = py::make_tuple(base, py::handle(builtin));
  py::object cls = py::reinterpret_steal<py::object>(
      PyErr_NewException((std::string("redknot.") + name).c_str(), bases.ptr(), ns.ptr()));
  if (!cls) throw py::error_already_set();
  m.attr(name) = cls;
  return cls;
}

// Raises exc with a C++ message. Messages may quote user bytes (a file's content, a path) that are not valid
// UTF-8: PyErr_SetString would then raise UnicodeDecodeError instead, so undecodable bytes become \xNN.
void raise_translated(py::handle exc, const char* what) {
  PyObject* msg = PyUnicode_DecodeUTF8(what, static_cast<Py_ssize_t>(std::strlen(what)), "backslashreplace");
  if (!msg) {
    PyErr_Clear();
    msg = PyUnicode_FromString("(undecodable error message)");
  }
  PyErr_SetObject(exc.ptr(), msg);
  Py_XDECREF(msg);
}

py::dict to_dict(const StoreStats& s) {
  py::dict d;
  d["num_sequences"] = s.num_sequences;
  d["pages_total"] = s.pages_total;
  d["pages_in_use"] = s.pages_in_use;
  d["pages_global"] = s.pages_global;
  d["pages_local"] = s.pages_local;
  d["bytes_in_use"] = s.bytes_in_use;
  d["bytes_global"] = s.bytes_global;
  d["bytes_local"] = s.bytes_local;
  return d;
}

py::dict to_dict(const SequenceStats& s) {
  py::dict d;
  d["pages_global"] = s.pages_global;
  d["pages_local"] = s.pages_local;
  d["tokens_global"] = s.tokens_global;
  d["tokens_local"] = s.tokens_local;
  d["bytes_global"] = s.bytes_global;
  d["bytes_local"] = s.bytes_local;
  return d;
}

// Chunk keys are 16 bytes in Python: hi then lo, big-endian, so key.hex() is the text C++ messages print.
py::bytes key_to_bytes(const ChunkKey& k) {
  char b[16];
  for (int i = 0; i < 8; ++i) {
    b[i] = static_cast<char>((k.hi >> (56 - 8 * i)) & 0xff);
    b[8 + i] = static_cast<char>((k.lo >> (56 - 8 * i)) & 0xff);
  }
  return py::bytes(b, sizeof b);
}

ChunkKey key_arg(py::handle h, const char* fn) {
  if (!PyBytes_Check(h.ptr()) || PyBytes_Size(h.ptr()) != 16)
    throw InvalidArgument(detail::concat(fn, ": key must be the 16 bytes Store.chunk_key returns, got ",
                                         type_name(h), " ", py_bindings::safe_repr(h)));
  const auto* b = reinterpret_cast<const unsigned char*>(PyBytes_AsString(h.ptr()));
  ChunkKey k;
  for (int i = 0; i < 8; ++i) {
    k.hi = (k.hi << 8) | b[i];
    k.lo = (k.lo << 8) | b[8 + i];
  }
  return k;
}

// The RoPE spec from the dict redknot.RopeConfig.to_dict() makes (None: the store has no spec). Field values
// are checked by the core's validate(), with its messages.
std::optional<RopeConfig> rope_arg(const py::object& o, int head_dim, const char* fn) {
  if (o.is_none()) return std::nullopt;
  if (!py::isinstance<py::dict>(o))
    throw InvalidArgument(detail::concat(fn, ": rope must be a redknot.RopeConfig, a dict or None, got ",
                                         type_name(o), " ", py_bindings::safe_repr(o)));
  RopeConfig r;
  r.head_dim = head_dim;
  for (const auto& [key_h, value] : py::reinterpret_borrow<py::dict>(o)) {
    const std::string key = str_arg(key_h, fn, "rope key");
    const std::string name = "rope." + key;
    if (key == "theta")
      r.theta = float_arg(value, fn, name.c_str());
    else if (key == "rotary_dim")
      r.rotary_dim = int_arg<int>(value, fn, name.c_str());
    else if (key == "factor")
      r.factor = float_arg(value, fn, name.c_str());
    else if (key == "low_freq_factor")
      r.low_freq_factor = float_arg(value, fn, name.c_str());
    else if (key == "high_freq_factor")
      r.high_freq_factor = float_arg(value, fn, name.c_str());
    else if (key == "original_max_position")
      r.original_max_position = int_arg<int>(value, fn, name.c_str());
    else if (key == "beta_fast")
      r.beta_fast = float_arg(value, fn, name.c_str());
    else if (key == "beta_slow")
      r.beta_slow = float_arg(value, fn, name.c_str());
    else if (key == "pairing") {
      const std::string v = str_arg(value, fn, name.c_str());
      if (v == "rotate_half")
        r.pairing = RopePairing::kRotateHalf;
      else if (v == "interleaved")
        r.pairing = RopePairing::kInterleaved;
      else
        throw InvalidArgument(
            detail::concat(fn, ": rope.pairing='", v, "' is not 'rotate_half' or 'interleaved'"));
    } else if (key == "scaling") {
      const std::string v = str_arg(value, fn, name.c_str());
      if (v == "default")
        r.scaling = RopeScaling::kDefault;
      else if (v == "linear")
        r.scaling = RopeScaling::kLinear;
      else if (v == "llama3")
        r.scaling = RopeScaling::kLlama3;
      else if (v == "yarn")
        r.scaling = RopeScaling::kYarn;
      else
        throw InvalidArgument(
            detail::concat(fn, ": rope.scaling='", v, "' is not 'default', 'linear', 'llama3' or 'yarn'"));
    } else {
      throw InvalidArgument(detail::concat(fn, ": rope has an unknown field '", key, "'"));
    }
  }
  validate(r);
  return r;
}

py::object rope_to_dict(const RopeConfig* r) {
  if (!r) return py::none();
  py::dict d;
  d["theta"] = r->theta;
  d["rotary_dim"] = r->rotary_dim;
  d["pairing"] = r->pairing == RopePairing::kRotateHalf ? "rotate_half" : "interleaved";
  constexpr const char* scalings[] = {"default", "linear", "llama3", "yarn"};
  d["scaling"] = scalings[static_cast<int>(r->scaling)];
  d["factor"] = r->factor;
  d["low_freq_factor"] = r->low_freq_factor;
  d["high_freq_factor"] = r->high_freq_factor;
  d["original_max_position"] = r->original_max_position;
  d["beta_fast"] = r->beta_fast;
  d["beta_slow"] = r->beta_slow;
  return d;
}

py::dict to_dict(const ChunkStats& s) {
  py::dict d;
  d["chunks"] = s.chunks;
  d["chunks_in_use"] = s.chunks_in_use;
  d["pages_held"] = s.pages_held;
  d["hits"] = s.hits;
  d["misses"] = s.misses;
  d["splices"] = s.splices;
  d["evictions"] = s.evictions;
  return d;
}

std::span<const float> float_span(const py::array_t<float, py::array::c_style>& a) {
  return {a.data(), static_cast<std::size_t>(a.size())};
}

template <class T>
py::array_t<T> to_numpy(const std::vector<T>& v) {
  py::array_t<T> a(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), a.mutable_data());
  return a;
}

// DLPack producer for the page pool: the capsule keeps the Python store object alive until the consumer's
// tensor is gone, so np.from_dlpack / torch.from_dlpack views stay valid after the Store is dropped.
struct PoolExport {
  DLManagedTensorVersioned versioned{};
  DLManagedTensor legacy{};
  std::int64_t shape[4] = {};
  PyObject* owner = nullptr;
};

template <class Managed>
void pool_deleter(Managed* self) {
  auto* ctx = static_cast<PoolExport*>(self->manager_ctx);
  const PyGILState_STATE gil = PyGILState_Ensure();  // consumers may free from any thread
  Py_XDECREF(ctx->owner);
  PyGILState_Release(gil);
  delete ctx;
}

// Capsule destructor: frees the export unless a consumer took it (and renamed the capsule "used_...").
template <class Managed>
void pool_capsule_destructor(PyObject* cap) {
  const char* name = std::is_same_v<Managed, DLManagedTensorVersioned> ? "dltensor_versioned" : "dltensor";
  if (!PyCapsule_IsValid(cap, name)) return;
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  auto* m = static_cast<Managed*>(PyCapsule_GetPointer(cap, name));
  m->deleter(m);
  PyErr_Restore(type, value, tb);
}

py::capsule pool_capsule(const py::object& owner, const DLTensor& pool, bool versioned) {
  auto* ctx = new PoolExport;
  std::copy(pool.shape, pool.shape + 4, ctx->shape);
  DLTensor t = pool;
  t.shape = ctx->shape;
  ctx->owner = owner.ptr();
  Py_INCREF(ctx->owner);
  PyObject* cap = nullptr;
  if (versioned) {
    ctx->versioned =
        DLManagedTensorVersioned{DLPackVersion{1, 0}, ctx, &pool_deleter<DLManagedTensorVersioned>, 0, t};
    cap = PyCapsule_New(&ctx->versioned, "dltensor_versioned",
                        &pool_capsule_destructor<DLManagedTensorVersioned>);
  } else {
    ctx->legacy = DLManagedTensor{t, ctx, &pool_deleter<DLManagedTensor>};
    cap = PyCapsule_New(&ctx->legacy, "dltensor", &pool_capsule_destructor<DLManagedTensor>);
  }
  if (!cap) {
    Py_DECREF(ctx->owner);
    delete ctx;
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::capsule>(cap);
}

// A strict bool argument (bool or numpy.bool_): 0, 1, None and strings are mistakes, not flags.
bool bool_arg(py::handle h, const char* fn, const char* name) {
  if (h.ptr() != nullptr && PyBool_Check(h.ptr())) return h.ptr() == Py_True;
  if (h.ptr() != nullptr && py::isinstance(h, py::module_::import("numpy").attr("bool_")))
    return py::bool_(py::reinterpret_borrow<py::object>(h)).cast<bool>();
  throw InvalidArgument(
      detail::concat(fn, ": ", name, " must be a bool, got ", type_name(h), " ", py_bindings::safe_repr(h)));
}

// A tier argument (redknot.HostTier or redknot.DiskTier); nullptr for None when allowed.
KvTier* tier_arg(const py::handle& h, const char* fn, const char* name, bool allow_none) {
  if (allow_none && h.is_none()) return nullptr;
  if (!py::isinstance<KvTier>(h))
    throw InvalidArgument(detail::concat(
        fn, ": ", name, " must be a redknot.HostTier, redknot.DiskTier or redknot.RedisTier",
        allow_none ? " (or None)" : "", ", got ", type_name(h), " ", py_bindings::safe_repr(h)));
  return &h.cast<KvTier&>();
}

TierPrefetcher* prefetcher_arg(const py::handle& h, const char* fn) {
  if (h.is_none()) return nullptr;
  if (!py::isinstance<TierPrefetcher>(h))
    throw InvalidArgument(detail::concat(fn, ": prefetcher must be a redknot.TierPrefetcher or None, got ",
                                         type_name(h), " ", py_bindings::safe_repr(h)));
  return &h.cast<TierPrefetcher&>();
}

// A bytes-like object's bytes (bytes, bytearray, memoryview, a C-contiguous numpy array), copied.
std::vector<std::byte> bytes_arg(const py::handle& h, const char* fn, const char* name) {
  Py_buffer view;
  if (h.ptr() == nullptr || PyUnicode_Check(h.ptr()) ||
      PyObject_GetBuffer(h.ptr(), &view, PyBUF_C_CONTIGUOUS) != 0) {
    PyErr_Clear();
    throw InvalidArgument(detail::concat(fn, ": ", name,
                                         " must be bytes-like (bytes, bytearray, memoryview), got ",
                                         type_name(h), " ", py_bindings::safe_repr(h)));
  }
  const auto* p = static_cast<const std::byte*>(view.buf);
  std::vector<std::byte> out(p, p + view.len);
  PyBuffer_Release(&view);
  return out;
}

py::dict to_dict(const TierStats& s) {
  py::dict d;
  d["capacity_bytes"] = s.capacity_bytes;
  d["bytes_held"] = s.bytes_held;
  d["objects"] = s.objects;
  d["hits"] = s.hits;
  d["misses"] = s.misses;
  d["evictions"] = s.evictions;
  d["evicted_bytes"] = s.evicted_bytes;
  d["bytes_written"] = s.bytes_written;
  d["bytes_read"] = s.bytes_read;
  d["put_failures"] = s.put_failures;
  d["corrupt"] = s.corrupt;
  d["get_ns"] = s.get_ns;
  d["spilled"] = s.spilled;
  d["spilled_bytes"] = s.spilled_bytes;
  return d;
}

py::dict to_dict(const ChunkTierStats& s) {
  py::dict d;
  d["demotions"] = s.demotions;
  d["dropped"] = s.dropped;
  d["write_failures"] = s.write_failures;
  d["promotions"] = s.promotions;
  d["promote_failures"] = s.promote_failures;
  d["rejected"] = s.rejected;
  d["misses"] = s.misses;
  d["bytes_down"] = s.bytes_down;
  d["bytes_up"] = s.bytes_up;
  d["prefetches"] = s.prefetches;
  d["read_wait_ns"] = s.read_wait_ns;
  d["promote_ns"] = s.promote_ns;
  return d;
}

#ifdef REDKNOT_HAS_REDIS
// A RedisTier with the cluster client it talks through. RedisTier only refers to its client; Python holds one
// object, so the two are one KvTier here and the client lives exactly as long as the tier.
class PyRedisTier final : public KvTier {
 public:
  PyRedisTier(RedisClusterOptions copt, RedisTierOptions topt)
      : client_(std::move(copt)), tier_(client_, std::move(topt)) {}
  bool put(std::string_view name, std::span<const std::byte> bytes) override {
    return tier_.put(name, bytes);
  }
  std::optional<std::vector<std::byte>> get(std::string_view name) override { return tier_.get(name); }
  bool remove(std::string_view name) override { return tier_.remove(name); }
  bool contains(std::string_view name) const override { return tier_.contains(name); }
  TierStats stats() const override { return tier_.stats(); }
  RedisTier& tier() { return tier_; }
  const RedisTier& tier() const { return tier_; }
  RedisClusterClient& client() { return client_; }
  const RedisClusterClient& client() const { return client_; }

 private:
  RedisClusterClient client_;  // declared first: the tier refers to it
  RedisTier tier_;
};

py::dict to_dict(const RedisClientStats& s) {
  py::dict d;
  d["commands"] = s.commands;
  d["failed"] = s.failed;
  d["moved"] = s.moved;
  d["ask"] = s.ask;
  d["retries"] = s.retries;
  d["connect_failures"] = s.connect_failures;
  d["connection_errors"] = s.connection_errors;
  d["slot_refreshes"] = s.slot_refreshes;
  d["down_events"] = s.down_events;
  d["fast_failures"] = s.fast_failures;
  return d;
}

// A 64-bit unsigned integer argument (a RedisTier write's nonce): int or anything with __index__, in
// [0, 2**64 - 1]; bool, float, str and None are mistakes.
std::uint64_t u64_arg(py::handle h, const char* fn, const char* name) {
  const auto bad = [&](const char* why) {
    return InvalidArgument(detail::concat(fn, ": ", name, " must be ", why, ", got ", type_name(h), " ",
                                          py_bindings::safe_repr(h)));
  };
  if (h.ptr() == nullptr || h.is_none() || PyBool_Check(h.ptr()) || PyFloat_Check(h.ptr()) ||
      PyUnicode_Check(h.ptr()) || PyBytes_Check(h.ptr()))
    throw bad("an integer");
  PyObject* idx = PyNumber_Index(h.ptr());
  if (!idx) {
    PyErr_Clear();
    throw bad("an integer");
  }
  const py::object as_int = py::reinterpret_steal<py::object>(idx);
  const unsigned long long v = PyLong_AsUnsignedLongLong(idx);
  if (v == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
    PyErr_Clear();  // negative or wider than 64 bits
    throw bad("an integer in [0, 2**64 - 1]");
  }
  return static_cast<std::uint64_t>(v);
}

// A bytes-like value that may be None (what redis-py's get returns for a missing key): nullopt for None.
std::optional<std::vector<std::byte>> optional_bytes_arg(const py::handle& h, const char* fn,
                                                         const char* name) {
  if (h.is_none()) return std::nullopt;
  return bytes_arg(h, fn, name);
}

std::string_view as_view(const std::vector<std::byte>& b) {
  return {reinterpret_cast<const char*>(b.data()), b.size()};
}

py::bytes to_py_bytes(std::string_view s) { return py::bytes(s.data(), s.size()); }
#endif

// A TieredChunkCache with the Python objects it uses: they stay alive as long as it does. impl is declared
// last so that it goes first (its destructor waits for reads in flight on the tiers and the prefetcher).
struct PyChunkTiers {
  py::object store;
  std::vector<py::object> tiers;
  py::object prefetcher;
  std::unique_ptr<AnyChunkTiers> impl;
};

}  // namespace

PYBIND11_MODULE(_redknot, m) {
  m.doc() = "redknot native module (use the redknot package, not this module, directly)";
  m.attr("__version__") = version_string();

  // ---- exceptions --------------------------------------------------------------------------------------
  // The classes live as long as the process (the module holds them too): the static handles own no reference,
  // so nothing is decref'd after the interpreter is gone.
  py::object base =
      py::reinterpret_steal<py::object>(PyErr_NewException("redknot.RedknotError", PyExc_Exception, nullptr));
  if (!base) throw py::error_already_set();
  base.attr("__doc__") = "Base class of every error redknot raises.";
  m.attr("RedknotError") = base;
  static py::handle invalid =
      make_exception(m, "InvalidArgument", base, PyExc_ValueError,
                     "A value is out of range, mis-shaped, or of the wrong dtype or device.")
          .release();
  static py::handle not_found =
      make_exception(m, "NotFound", base, PyExc_KeyError, "A sequence id that is not live.").release();
  static py::handle exhausted =
      make_exception(m, "PoolExhausted", base, PyExc_MemoryError,
                     "The page pool is full: free sequences and retry (nothing changed).")
          .release();
  static py::handle unavailable = make_exception(m, "Unavailable", base, PyExc_RuntimeError,
                                                 "The requested backend (e.g. CUDA) is not available.")
                                      .release();
  static py::handle internal =
      make_exception(m, "InternalError", base, PyExc_RuntimeError,
                     "An unexpected failure inside redknot (a C++ exception that is none of the above); "
                     "please report it with the message.")
          .release();
  static py::handle tier_refused =
      make_exception(m, "TierRefused", base, PyExc_RuntimeError,
                     "A tier did not take an object (larger than the tier, a full device, a read-only "
                     "directory): nothing moved; Store.swap_out leaves the sequence live.")
          .release();
  static py::handle tier_miss =
      make_exception(
          m, "TierMiss", base, PyExc_LookupError,
          "A tier object is missing (evicted, removed) or failed verification (corrupt, truncated, "
          "another model): what it held cannot come back from there.")
          .release();
  // Every C++ exception leaves as a RedknotError subclass. pybind11's own exceptions (a Python error raised
  // in a callback, cast errors, ...) are rethrown for pybind11's translator, which restores them as they
  // were.
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const py::error_already_set&) {
      throw;
    } catch (const py::builtin_exception&) {
      throw;
    } catch (const InvalidArgument& e) {
      raise_translated(invalid, e.what());
    } catch (const NotFound& e) {
      raise_translated(not_found, e.what());
    } catch (const PoolExhausted& e) {
      raise_translated(exhausted, e.what());
    } catch (const Unavailable& e) {
      raise_translated(unavailable, e.what());
    } catch (const TierRefused& e) {
      raise_translated(tier_refused, e.what());
    } catch (const TierMiss& e) {
      raise_translated(tier_miss, e.what());
    } catch (const std::bad_alloc&) {
      raise_translated(exhausted, "out of host memory (std::bad_alloc): nothing was changed");
    } catch (const std::length_error& e) {  // a container asked for more than max_size(): as in the C ABI
      raise_translated(exhausted, detail::concat("out of memory: a host allocation larger than the address "
                                                 "space was requested (",
                                                 e.what(), ")")
                                      .c_str());
    } catch (const std::exception& e) {
      raise_translated(internal,
                       detail::concat("internal error (", typeid(e).name(), "): ", e.what()).c_str());
    }
  });

  // ---- head maps ---------------------------------------------------------------------------------------
  py::class_<HeadPolicy>(m, "HeadPolicy", "Class, window and sink of one (layer, kv_head).")
      .def_property_readonly("cls", [](const HeadPolicy& p) { return std::string(head_class_name(p.cls)); })
      .def_readonly("window", &HeadPolicy::window)
      .def_readonly("sink", &HeadPolicy::sink)
      .def("is_local", &HeadPolicy::is_local)
      .def("__eq__", [](const HeadPolicy& a, const HeadPolicy& b) { return a == b; })
      .def("__repr__", [](const HeadPolicy& p) {
        return detail::concat("HeadPolicy(cls='", head_class_name(p.cls), "', window=", p.window,
                              ", sink=", p.sink, ")");
      });

  py::class_<HeadMap>(m, "HeadMap", "Per-(layer, kv_head) classes: the RedKnot JSON head map.")
      .def_static(
          "from_json",
          [](const py::object& text) {
            return HeadMap::from_json(str_arg(text, "HeadMap.from_json", "text", /*allow_bytes=*/true));
          },
          py::arg("text"))
      .def_static(
          "load",
          [](const py::object& path) { return HeadMap::load(path_arg(path, "HeadMap.load", "path")); },
          py::arg("path"))
      .def_static(
          "all_global",
          [](const py::object& L, const py::object& H) {
            return HeadMap::all_global(int_arg<int>(L, "HeadMap.all_global", "num_layers"),
                                       int_arg<int>(H, "HeadMap.all_global", "num_kv_heads"));
          },
          py::arg("num_layers"), py::arg("num_kv_heads"))
      .def_static(
          "uniform",
          [](const py::object& L, const py::object& H, const py::object& cls, const py::object& window,
             const py::object& sink) {
            constexpr const char* fn = "HeadMap.uniform";
            const int l = int_arg<int>(L, fn, "num_layers"), h = int_arg<int>(H, fn, "num_kv_heads");
            const HeadClass c = parse_head_class(str_arg(cls, fn, "cls"));
            return HeadMap::uniform(l, h, c, int_arg<int>(window, fn, "window"),
                                    int_arg<int>(sink, fn, "sink"));
          },
          py::arg("num_layers"), py::arg("num_kv_heads"), py::arg("cls"), py::arg("window") = -1,
          py::arg("sink") = 0)
      .def_static(
          "with_global_ratio",
          [](const py::object& L, const py::object& H, const py::object& ratio, const py::object& window,
             const py::object& sink) {
            constexpr const char* fn = "HeadMap.with_global_ratio";
            const int l = int_arg<int>(L, fn, "num_layers"), h = int_arg<int>(H, fn, "num_kv_heads");
            return HeadMap::with_global_ratio(l, h, float_arg(ratio, fn, "global_ratio"),
                                              int_arg<int>(window, fn, "window"),
                                              int_arg<int>(sink, fn, "sink"));
          },
          py::arg("num_layers"), py::arg("num_kv_heads"), py::arg("global_ratio"), py::arg("window"),
          py::arg("sink"))
      .def(
          "to_json",
          [](const HeadMap& h, const py::object& indent) {
            return h.to_json(int_arg<int>(indent, "HeadMap.to_json", "indent"));
          },
          py::arg("indent") = 2)
      .def(
          "save",
          [](const HeadMap& h, const py::object& path) { h.save(path_arg(path, "HeadMap.save", "path")); },
          py::arg("path"))
      .def_property_readonly("num_layers", &HeadMap::num_layers)
      .def_property_readonly("num_kv_heads", &HeadMap::num_kv_heads)
      .def_property_readonly("dense_prefix_layers", &HeadMap::dense_prefix_layers)
      .def_property_readonly("retrieval_top_p", &HeadMap::retrieval_top_p)
      .def(
          "policy",
          [](const HeadMap& h, const py::object& layer, const py::object& kv_head) {
            return h.policy(int_arg<int>(layer, "HeadMap.policy", "layer"),
                            int_arg<int>(kv_head, "HeadMap.policy", "kv_head"));
          },
          py::arg("layer"), py::arg("kv_head"))
      .def(
          "raw",
          [](const HeadMap& h, const py::object& layer, const py::object& kv_head) {
            return h.raw(int_arg<int>(layer, "HeadMap.raw", "layer"),
                         int_arg<int>(kv_head, "HeadMap.raw", "kv_head"));
          },
          py::arg("layer"), py::arg("kv_head"))
      .def(
          "set",
          [](HeadMap& h, const py::object& layer_o, const py::object& kv_head_o, const py::object& cls_o,
             const py::object& window_o, const py::object& sink_o) {
            constexpr const char* fn = "HeadMap.set";
            const int layer = int_arg<int>(layer_o, fn, "layer");
            const int kv_head = int_arg<int>(kv_head_o, fn, "kv_head");
            const HeadClass c = parse_head_class(str_arg(cls_o, fn, "cls"));
            const int window = int_arg<int>(window_o, fn, "window");
            const int sink = int_arg<int>(sink_o, fn, "sink");
            h.set(layer, kv_head, HeadPolicy{c, c == HeadClass::kLocal ? window : -1, sink});
          },
          py::arg("layer"), py::arg("kv_head"), py::arg("cls"), py::arg("window") = -1, py::arg("sink") = 0)
      .def(
          "set_dense_prefix_layers",
          [](HeadMap& h, const py::object& n) {
            h.set_dense_prefix_layers(int_arg<int>(n, "HeadMap.set_dense_prefix_layers", "n"));
          },
          py::arg("n"))
      .def("count_local", &HeadMap::count_local)
      .def("count_global_like", &HeadMap::count_global_like)
      .def("global_ratio", &HeadMap::global_ratio)
      .def(
          "peak_sequence_pages",
          [](const HeadMap& m, const py::object& page_size, const py::object& num_tokens,
             const py::object& chunk) {
            constexpr const char* fn = "HeadMap.peak_sequence_pages";
            return peak_sequence_pages(m, int_arg<int>(page_size, fn, "page_size"),
                                       int_arg<std::int64_t>(num_tokens, fn, "num_tokens"),
                                       int_arg<std::int64_t>(chunk, fn, "chunk"));
          },
          py::arg("page_size"), py::arg("num_tokens"), py::arg("chunk"),
          "Pages to reserve per sequence for num_tokens positions appended in chunks of at most `chunk`.")
      .def("validate", &HeadMap::validate)
      .def("__eq__", [](const HeadMap& a, const HeadMap& b) { return a == b; })
      .def("__copy__", [](const HeadMap& h) { return HeadMap(h); })
      .def("__deepcopy__", [](const HeadMap& h, const py::object&) { return HeadMap(h); })
      .def(py::pickle([](const HeadMap& h) { return py::str(h.to_json(-1)); },
                      [](const py::str& s) {
                        return HeadMap::from_json(str_arg(s, "HeadMap.__setstate__", "state", true));
                      }))
      .def("__repr__", [](const HeadMap& h) {
        return detail::concat("HeadMap(num_layers=", h.num_layers(), ", num_kv_heads=", h.num_kv_heads(),
                              ", local=", h.count_local(), ", global_like=", h.count_global_like(), ")");
      });

  // ---- stores ------------------------------------------------------------------------------------------
  // Every integer argument goes through int_arg (see args.hpp); SeqId is int64, positions int32.
  py::class_<AnyStore>(m, "_Store", "Native store; use redknot.Store.")
      .def(
          py::init([](const py::object& num_layers, const py::object& num_q_heads,
                      const py::object& num_kv_heads, const py::object& head_dim, const py::object& dtype,
                      const py::object& map, const py::object& page_size, const py::object& num_pages,
                      const py::object& device, const py::object& rope) {
            constexpr const char* fn = "Store";
            ModelShape shape{
                int_arg<int>(num_layers, fn, "num_layers"), int_arg<int>(num_q_heads, fn, "num_q_heads"),
                int_arg<int>(num_kv_heads, fn, "num_kv_heads"), int_arg<int>(head_dim, fn, "head_dim"),
                parse_dtype(str_arg(dtype, fn, "dtype"))};
            if (!py::isinstance<HeadMap>(map))
              throw InvalidArgument(detail::concat(fn, ": head_map must be a HeadMap, got ", type_name(map)));
            const StoreConfig config{int_arg<int>(page_size, fn, "page_size"),
                                     int_arg<std::int32_t>(num_pages, fn, "num_pages")};
            const DLDevice dev = parse_device(str_arg(device, fn, "device"));
            // The shape first (its messages name the shape's fields), then the RoPE spec, which needs
            // head_dim.
            shape.validate();
            return make_store(shape, map.cast<const HeadMap&>(), config, dev,
                              rope_arg(rope, shape.head_dim, fn));
          }),
          py::arg("num_layers"), py::arg("num_q_heads"), py::arg("num_kv_heads"), py::arg("head_dim"),
          py::arg("dtype"), py::arg("head_map"), py::arg("page_size"), py::arg("num_pages"),
          py::arg("device"), py::arg("rope"))
      .def_property_readonly("rope", [](const AnyStore& s) { return rope_to_dict(s.rope()); })
      .def_property_readonly("num_layers", [](const AnyStore& s) { return s.shape().num_layers; })
      .def_property_readonly("num_q_heads", [](const AnyStore& s) { return s.shape().num_q_heads; })
      .def_property_readonly("num_kv_heads", [](const AnyStore& s) { return s.shape().num_kv_heads; })
      .def_property_readonly("head_dim", [](const AnyStore& s) { return s.shape().head_dim; })
      .def_property_readonly("dtype",
                             [](const AnyStore& s) { return std::string(dtype_name(s.shape().dtype)); })
      .def_property_readonly("page_size", &AnyStore::page_size)
      .def_property_readonly("num_pages", &AnyStore::num_pages)
      .def_property_readonly("device", [](const AnyStore& s) { return device_name(s.device()); })
      .def_property_readonly("head_map", [](const AnyStore& s) { return HeadMap(s.head_map()); })
      .def("create_sequence", &AnyStore::create_sequence)
      .def(
          "fork",
          [](AnyStore& s, const py::object& parent) { return s.fork(seq_arg(parent, "fork", "parent")); },
          py::arg("parent"))
      .def(
          "free_sequence",
          [](AnyStore& s, const py::object& seq) { s.free_sequence(seq_arg(seq, "free_sequence", "seq")); },
          py::arg("seq"))
      .def(
          "contains",
          [](const AnyStore& s, const py::object& seq) {
            return s.contains(seq_arg(seq, "contains", "seq"));
          },
          py::arg("seq"))
      .def("sequences", &AnyStore::sequences)
      .def(
          "next_position",
          [](const AnyStore& s, const py::object& seq, const py::object& layer) {
            return s.next_position(seq_arg(seq, "next_position", "seq"),
                                   int_arg<int>(layer, "next_position", "layer"));
          },
          py::arg("seq"), py::arg("layer"))
      .def(
          "query_floor",
          [](const AnyStore& s, const py::object& seq, const py::object& layer) {
            return s.query_floor(seq_arg(seq, "query_floor", "seq"),
                                 int_arg<int>(layer, "query_floor", "layer"));
          },
          py::arg("seq"), py::arg("layer"))
      .def(
          "retire_queries",
          [](AnyStore& s, const py::object& seq, const py::object& next_query_pos, const py::object& layer) {
            constexpr const char* fn = "retire_queries";
            s.retire_queries(seq_arg(seq, fn, "seq"),
                             int_arg<std::int32_t>(next_query_pos, fn, "next_query_pos"),
                             int_arg<int>(layer, fn, "layer"));
          },
          py::arg("seq"), py::arg("next_query_pos"), py::arg("layer") = -1)
      .def(
          "page_table",
          [](const AnyStore& s, const py::object& seq, const py::object& layer, const py::object& kv_head) {
            constexpr const char* fn = "page_table";
            std::vector<py::tuple> rows;
            for (const PageEntry& e : s.table(seq_arg(seq, fn, "seq"), int_arg<int>(layer, fn, "layer"),
                                              int_arg<int>(kv_head, fn, "kv_head")))
              rows.push_back(py::make_tuple(e.page_id, e.first, e.count, e.pos0));
            return rows;
          },
          py::arg("seq"), py::arg("layer"), py::arg("kv_head"))
      .def(
          "append",
          [](AnyStore& s, const py::object& seq, const py::object& layer_o, const py::handle& k,
             const py::handle& v, const py::object& positions) {
            const SeqId id = seq_arg(seq, "append", "seq");
            const int layer = int_arg<int>(layer_o, "append", "layer");
            const auto pos_a = int_array_arg<std::int32_t>(positions, "append", "positions");
            const auto pos = span_of(pos_a, "positions");
            const ImportedTensor kt(k, "k", false);
            const ImportedTensor vt(v, "v", false);
            py::gil_scoped_release nogil;
            s.append(id, layer, kt.tensor(), vt.tensor(), pos);
          },
          py::arg("seq"), py::arg("layer"), py::arg("k"), py::arg("v"), py::arg("positions"))
      .def(
          "append_batch",
          [](AnyStore& s, const py::object& layer_o, const py::object& seq_ids,
             const py::object& token_offsets, const py::handle& k, const py::handle& v,
             const py::object& positions) {
            const int layer = int_arg<int>(layer_o, "append_batch", "layer");
            const auto ids = int_array_arg<std::int64_t>(seq_ids, "append_batch", "seq_ids");
            const auto offs = int_array_arg<std::int32_t>(token_offsets, "append_batch", "token_offsets");
            const auto pos = int_array_arg<std::int32_t>(positions, "append_batch", "positions");
            const ImportedTensor kt(k, "k", false);
            const ImportedTensor vt(v, "v", false);
            py::gil_scoped_release nogil;
            s.append_batch(layer, span_of(ids, "seq_ids"), span_of(offs, "token_offsets"), kt.tensor(),
                           vt.tensor(), span_of(pos, "positions"));
          },
          py::arg("layer"), py::arg("seq_ids"), py::arg("token_offsets"), py::arg("k"), py::arg("v"),
          py::arg("positions"))
      .def(
          "plan",
          [](AnyStore& s, const py::object& seq_ids, const py::object& q_lens,
             const py::object& q_positions) {
            const auto ids = int_array_arg<std::int64_t>(seq_ids, "plan", "seq_ids");
            const auto lens = int_array_arg<std::int32_t>(q_lens, "plan", "q_lens");
            const auto pos = int_array_arg<std::int32_t>(q_positions, "plan", "q_positions");
            s.plan(span_of(ids, "seq_ids"), span_of(lens, "q_lens"), span_of(pos, "q_positions"));
          },
          py::arg("seq_ids"), py::arg("q_lens"), py::arg("q_positions"))
      .def("planned_queries", &AnyStore::planned_queries)
      .def(
          "run",
          [](AnyStore& s, const py::object& layer_o, const py::handle& q, const py::handle& out,
             const py::object& lse, const py::object& sm_scale, const py::object& num_threads) {
            const int layer = int_arg<int>(layer_o, "run", "layer");
            // sm_scale: None is 0, the default 1/sqrt(head_dim), as in C and C++. Its range and num_threads'
            // are checked by check_attention_params (AnyStore::run), for every binding.
            const float scale = sm_scale.is_none() ? 0.f : float32_arg(sm_scale, "run", "sm_scale");
            const int threads = int_arg<int>(num_threads, "run", "num_threads");
            const ImportedTensor qt(q, "q", false);
            const ImportedTensor ot(out, "out", true);
            std::optional<ImportedTensor> lt;
            if (!lse.is_none()) lt.emplace(lse, "lse", true);
            AttentionParams params;
            params.scale = scale;
            params.num_threads = threads;
            py::gil_scoped_release nogil;
            s.run(layer, qt.tensor(), ot.tensor(), lt ? lt->get() : nullptr, params);
          },
          py::arg("layer"), py::arg("q"), py::arg("out"), py::arg("lse"), py::arg("sm_scale"),
          py::arg("num_threads"))
      .def(
          "kv_pool_capsule",
          [](const py::object& self, const py::object& versioned) {
            return pool_capsule(self, self.cast<const AnyStore&>().kv_pool(),
                                py::bool_(versioned).cast<bool>());
          },
          py::arg("versioned"))
      // ---- chunks (position-independent reuse; KVHeadStore semantics) ----
      .def(
          "chunk_key",
          [](const AnyStore& s, const py::object& model_id, const py::object& tokens) {
            const std::string id = str_arg(model_id, "chunk_key", "model_id");
            const auto t = int_array_arg<std::int32_t>(tokens, "chunk_key", "tokens");
            return key_to_bytes(s.chunk_key(id, span_of(t, "tokens")));
          },
          py::arg("model_id"), py::arg("tokens"))
      .def(
          "register_chunk",
          [](AnyStore& s, const py::object& key, const py::object& seq) {
            s.register_chunk(key_arg(key, "register_chunk"), seq_arg(seq, "register_chunk", "seq"));
          },
          py::arg("key"), py::arg("seq"))
      .def(
          "lookup_chunk",
          [](AnyStore& s, const py::object& key) { return s.lookup_chunk(key_arg(key, "lookup_chunk")); },
          py::arg("key"))
      .def(
          "splice",
          [](AnyStore& s, const py::object& seq, const py::object& key, const py::object& at,
             const py::object& first_query) {
            constexpr const char* fn = "splice";
            s.splice(seq_arg(seq, fn, "seq"), key_arg(key, fn), int_arg<std::int32_t>(at, fn, "at"),
                     int_arg<std::int32_t>(first_query, fn, "first_query"));
          },
          py::arg("seq"), py::arg("key"), py::arg("at"), py::arg("first_query"))
      .def(
          "relocate",
          [](AnyStore& s, const py::object& seq, const py::object& key, const py::object& at,
             const py::object& first_query) {
            constexpr const char* fn = "relocate";
            const SeqId id = seq_arg(seq, fn, "seq");
            const ChunkKey k = key_arg(key, fn);
            const auto a = int_arg<std::int32_t>(at, fn, "at");
            const auto f = int_arg<std::int32_t>(first_query, fn, "first_query");
            py::gil_scoped_release nogil;
            s.relocate(id, k, a, f);
          },
          py::arg("seq"), py::arg("key"), py::arg("at"), py::arg("first_query"))
      .def(
          "drop_chunk",
          [](AnyStore& s, const py::object& key) { return s.drop_chunk(key_arg(key, "drop_chunk")); },
          py::arg("key"))
      .def("chunk_stats", [](const AnyStore& s) { return to_dict(s.chunk_stats()); })
      .def(
          "overwrite",
          [](AnyStore& s, const py::object& seq, const py::object& layer_o, const py::handle& k,
             const py::handle& v, const py::object& positions) {
            const SeqId id = seq_arg(seq, "overwrite", "seq");
            const int layer = int_arg<int>(layer_o, "overwrite", "layer");
            const auto pos_a = int_array_arg<std::int32_t>(positions, "overwrite", "positions");
            const ImportedTensor kt(k, "k", false);
            const ImportedTensor vt(v, "v", false);
            py::gil_scoped_release nogil;
            s.overwrite(id, layer, kt.tensor(), vt.tensor(), span_of(pos_a, "positions"));
          },
          py::arg("seq"), py::arg("layer"), py::arg("k"), py::arg("v"), py::arg("positions"))
      .def(
          "read_rows",
          [](const AnyStore& s, const py::object& seq, const py::object& layer_o,
             const py::object& positions) {
            const SeqId id = seq_arg(seq, "read_rows", "seq");
            const int layer = int_arg<int>(layer_o, "read_rows", "layer");
            const auto pos_a = int_array_arg<std::int32_t>(positions, "read_rows", "positions");
            const auto pos = span_of(pos_a, "positions");
            const auto n = static_cast<py::ssize_t>(pos.size());
            const py::ssize_t kvh = s.shape().num_kv_heads, hd = s.shape().head_dim;
            py::array_t<float> k({n, kvh, hd}), v({n, kvh, hd});
            s.read_rows(id, layer, pos, {k.mutable_data(), static_cast<std::size_t>(k.size())},
                        {v.mutable_data(), static_cast<std::size_t>(v.size())});
            return py::make_tuple(k, v);
          },
          py::arg("seq"), py::arg("layer"), py::arg("positions"))
      // ---- tiers (tiers.hpp): sequence swap and chunks below the pool ----
      .def(
          "swap_out",
          [](AnyStore& s, const py::object& seq, const py::object& hot, const py::object& cold,
             const py::object& model_id, const py::object& name) {
            constexpr const char* fn = "swap_out";
            const SeqId id = seq_arg(seq, fn, "seq");
            KvTier* h = tier_arg(hot, fn, "hot", false);
            KvTier* c = tier_arg(cold, fn, "cold", true);
            const std::string model = str_arg(model_id, fn, "model_id");
            const std::string n = str_arg(name, fn, "name");
            py::gil_scoped_release nogil;
            return any_swap_out(s, id, *h, c, model, n);
          },
          py::arg("seq"), py::arg("hot"), py::arg("cold"), py::arg("model_id"), py::arg("name"))
      .def(
          "swap_in",
          [](AnyStore& s, const py::object& ticket, const py::object& hot, const py::object& cold,
             const py::object& prefetcher) {
            constexpr const char* fn = "swap_in";
            if (!py::isinstance<AnySwapTicket>(ticket))
              throw InvalidArgument(
                  detail::concat(fn, ": ticket must be the redknot.SwapTicket swap_out returned, got ",
                                 type_name(ticket), " ", py_bindings::safe_repr(ticket)));
            AnySwapTicket& t = ticket.cast<AnySwapTicket&>();
            KvTier* h = tier_arg(hot, fn, "hot", false);
            KvTier* c = tier_arg(cold, fn, "cold", true);
            TierPrefetcher* p = prefetcher_arg(prefetcher, fn);
            py::gil_scoped_release nogil;
            return any_swap_in(s, t, *h, c, p);
          },
          py::arg("ticket"), py::arg("hot"), py::arg("cold"), py::arg("prefetcher"))
      .def(
          "chunk_tiers",
          [](const py::object& self, const py::object& tiers, const py::object& model_id,
             const py::object& min_splices, const py::object& prefetcher) {
            constexpr const char* fn = "chunk_tiers";
            AnyStore& s = self.cast<AnyStore&>();
            if (!py::isinstance<py::list>(tiers) && !py::isinstance<py::tuple>(tiers))
              throw InvalidArgument(detail::concat(
                  fn, ": tiers must be a list of redknot.HostTier / DiskTier / RedisTier, got ",
                  type_name(tiers), " ", py_bindings::safe_repr(tiers)));
            auto out = std::make_unique<PyChunkTiers>();
            std::vector<KvTier*> ptrs;
            const py::sequence seq = py::reinterpret_borrow<py::sequence>(tiers);
            for (std::size_t i = 0; i < seq.size(); ++i) {
              const py::object t = seq[i];
              const std::string name = detail::concat("tiers[", i, "]");
              KvTier* k = tier_arg(t, fn, name.c_str(), false);
              for (std::size_t j = 0; j < ptrs.size(); ++j)
                if (ptrs[j] == k)
                  throw InvalidArgument(
                      detail::concat(fn, ": tiers[", j, "] and tiers[", i, "] are the same tier"));
              ptrs.push_back(k);
              out->tiers.push_back(t);
            }
            const std::string model = str_arg(model_id, fn, "model_id");
            const auto min = int_arg<std::int64_t>(min_splices, fn, "min_splices");
            TierPrefetcher* p = prefetcher_arg(prefetcher, fn);
            out->store = self;
            out->prefetcher = prefetcher;
            out->impl = s.make_chunk_tiers(model_fingerprint(model), std::move(ptrs), min, p);
            return out;
          },
          py::arg("tiers"), py::arg("model_id"), py::arg("min_splices"), py::arg("prefetcher"))
      .def("stats", [](const AnyStore& s) { return to_dict(s.stats()); })
      .def(
          "sequence_stats",
          [](const AnyStore& s, const py::object& seq) {
            return to_dict(s.sequence_stats(seq_arg(seq, "sequence_stats", "seq")));
          },
          py::arg("seq"))
      .def(
          "pages_per_sequence",
          [](const AnyStore& s, const py::object& n) {
            return s.pages_per_sequence(int_arg<std::int64_t>(n, "pages_per_sequence", "num_tokens"));
          },
          py::arg("num_tokens"))
      .def(
          "sequences_that_fit",
          [](const AnyStore& s, const py::object& n) {
            return s.sequences_that_fit(int_arg<std::int64_t>(n, "sequences_that_fit", "num_tokens"));
          },
          py::arg("num_tokens"))
      .def(
          "export_page_table",
          [](const AnyStore& s, const py::object& layer, const py::object& seq_ids) {
            const int l = int_arg<int>(layer, "export_page_table", "layer");
            const auto ids = int_array_arg<std::int64_t>(seq_ids, "export_page_table", "seq_ids");
            const PageTableCsr csr = s.export_page_table(l, span_of(ids, "seq_ids"));
            return py::make_tuple(to_numpy(csr.indptr), to_numpy(csr.indices), to_numpy(csr.last_page_len),
                                  to_numpy(csr.page_pos0));
          },
          py::arg("layer"), py::arg("seq_ids"));

  // ---- tiers ------------------------------------------------------------------------------------------
  py::class_<KvTier>(
      m, "KvTier",
      "A tier of named byte objects; use redknot.HostTier, redknot.DiskTier or redknot.RedisTier.")
      .def(
          "put",
          [](KvTier& t, const py::object& name, const py::object& data) {
            const std::string n = str_arg(name, "KvTier.put", "name");
            const std::vector<std::byte> b = bytes_arg(data, "KvTier.put", "data");
            py::gil_scoped_release nogil;
            return t.put(n, b);
          },
          py::arg("name"), py::arg("data"))
      .def(
          "get",
          [](KvTier& t, const py::object& name) -> py::object {
            const std::string n = str_arg(name, "KvTier.get", "name");
            std::optional<std::vector<std::byte>> b;
            {
              py::gil_scoped_release nogil;
              b = t.get(n);
            }
            if (!b) return py::none();
            return py::bytes(reinterpret_cast<const char*>(b->data()), b->size());
          },
          py::arg("name"))
      .def(
          "remove",
          [](KvTier& t, const py::object& name) {
            const std::string n = str_arg(name, "KvTier.remove", "name");
            py::gil_scoped_release nogil;  // a RedisTier's remove is a network round trip
            return t.remove(n);
          },
          py::arg("name"))
      .def(
          "contains",
          [](const KvTier& t, const py::object& name) {
            const std::string n = str_arg(name, "KvTier.contains", "name");
            py::gil_scoped_release nogil;
            return t.contains(n);
          },
          py::arg("name"))
      .def("stats", [](const KvTier& t) { return to_dict(t.stats()); });

  py::class_<HostTier, KvTier>(m, "HostTier", "Objects in RAM, least recently used evicted first.")
      .def(py::init([](const py::object& capacity) {
             return std::make_unique<HostTier>(int_arg<std::int64_t>(capacity, "HostTier", "capacity_bytes"));
           }),
           py::arg("capacity_bytes"))
      .def("__repr__", [](const HostTier& t) {
        const TierStats s = t.stats();
        return detail::concat("HostTier(capacity_bytes=", s.capacity_bytes, ", objects=", s.objects,
                              ", bytes_held=", s.bytes_held, ")");
      });

  py::class_<DiskTier, KvTier>(m, "DiskTier", "Objects as files <name>.rkt in one directory.")
      .def(py::init([](const py::object& path, const py::object& capacity, const py::object& create,
                       const py::object& fsync) {
             constexpr const char* fn = "DiskTier";
             const std::string dir = path_arg(path, fn, "path");
             require(!dir.empty(), fn, ": path is empty");
             const auto cap = int_arg<std::int64_t>(capacity, fn, "capacity_bytes");
             return std::make_unique<DiskTier>(dir, cap, bool_arg(create, fn, "create"),
                                               bool_arg(fsync, fn, "fsync"));
           }),
           py::arg("path"), py::arg("capacity_bytes"), py::arg("create") = true, py::arg("fsync") = false)
      .def_property_readonly("path", [](const DiskTier& t) { return t.dir().string(); })
      .def(
          "path_of",
          [](const DiskTier& t, const py::object& name) {
            const std::string n = str_arg(name, "DiskTier.path_of", "name");
            check_object_name(n);
            return t.path_of(n).string();
          },
          py::arg("name"))
      .def("__repr__", [](const DiskTier& t) {
        const TierStats s = t.stats();
        return detail::concat("DiskTier(path='", t.dir().string(), "', capacity_bytes=", s.capacity_bytes,
                              ", objects=", s.objects, ", bytes_held=", s.bytes_held, ")");
      });

  // ---- the remote tier (redis_tier.hpp) ------------------------------------------------------------------
  // Bound only when the module links redknot::redis (hiredis found at build time); otherwise RedisTier and
  // the object-format functions exist and raise Unavailable, so code can test redknot.HAS_REDIS or catch it.
#ifdef REDKNOT_HAS_REDIS
  m.attr("HAS_REDIS") = true;
  py::class_<PyRedisTier, KvTier>(m, "RedisTier", "Objects on a Redis Cluster (two keys per object).")
      .def(
          py::init([](const py::object& seeds_o, const py::object& prefix_o, const py::object& ttl_o,
                      const py::object& max_bytes_o, const py::object& connect_o, const py::object& command_o,
                      const py::object& deadline_o, const py::object& rounds_o, const py::object& outage_o) {
            constexpr const char* fn = "RedisTier";
            if (!py::isinstance<py::list>(seeds_o) && !py::isinstance<py::tuple>(seeds_o))
              throw InvalidArgument(detail::concat(fn, ": seeds must be a list of 'host:port' strings, got ",
                                                   type_name(seeds_o), " ", py_bindings::safe_repr(seeds_o)));
            RedisClusterOptions copt;
            const py::sequence seq = py::reinterpret_borrow<py::sequence>(seeds_o);
            require(seq.size() > 0, fn, ": seeds is empty (give at least one 'host:port' of the cluster)");
            for (std::size_t i = 0; i < seq.size(); ++i) {
              const std::string arg = detail::concat("seeds[", i, "]");
              std::string seed = str_arg(seq[i], fn, arg.c_str());
              // The client's own check, with the argument named: host, ':', a port in 1..65535.
              const std::size_t colon = seed.rfind(':');
              const std::string port = colon == std::string::npos ? std::string() : seed.substr(colon + 1);
              const bool port_ok = !port.empty() && port.size() <= 5 &&
                                   port.find_first_not_of("0123456789") == std::string::npos &&
                                   std::stoi(port) >= 1 && std::stoi(port) <= 65535;
              require(colon != std::string::npos && colon > 0 && port_ok, fn, ": ", arg, "='", seed,
                      "' is not 'host:port' (port 1..65535)");
              copt.seeds.push_back(std::move(seed));
            }
            const auto ms = [&](const py::object& o, const char* name, bool zero_ok) {
              const auto v = int_arg<std::int64_t>(o, fn, name);
              require(zero_ok ? v >= 0 : v > 0, fn, ": ", name, "=", v,
                      zero_ok ? " must be >= 0" : " must be > 0");
              return std::chrono::milliseconds(v);
            };
            copt.connect_timeout = ms(connect_o, "connect_timeout_ms", false);
            copt.command_timeout = ms(command_o, "command_timeout_ms", false);
            copt.request_deadline = ms(deadline_o, "request_deadline_ms", false);
            copt.max_rounds = int_arg<int>(rounds_o, fn, "max_rounds");
            copt.outage_retry = ms(outage_o, "outage_retry_ms", true);
            RedisTierOptions topt;
            topt.prefix = str_arg(prefix_o, fn, "prefix");
            topt.ttl = ms(ttl_o, "ttl_ms", true);
            topt.max_object_bytes = int_arg<std::int64_t>(max_bytes_o, fn, "max_object_bytes");
            // The tier's option checks before the client connects (which may wait for a cluster that is
            // down).
            RedisTier::check_options(topt);
            py::gil_scoped_release nogil;  // the client reads the slot map now (up to request_deadline)
            return std::make_unique<PyRedisTier>(std::move(copt), std::move(topt));
          }),
          py::arg("seeds"), py::kw_only(), py::arg("prefix") = "redknot", py::arg("ttl_ms") = 0,
          py::arg("max_object_bytes") = RedisTierOptions{}.max_object_bytes,
          py::arg("connect_timeout_ms") = RedisClusterOptions{}.connect_timeout.count(),
          py::arg("command_timeout_ms") = RedisClusterOptions{}.command_timeout.count(),
          py::arg("request_deadline_ms") = RedisClusterOptions{}.request_deadline.count(),
          py::arg("max_rounds") = RedisClusterOptions{}.max_rounds,
          py::arg("outage_retry_ms") = RedisClusterOptions{}.outage_retry.count())
      .def(
          "get_many",
          [](PyRedisTier& t, const py::object& names_o) {
            constexpr const char* fn = "RedisTier.get_many";
            if (!py::isinstance<py::list>(names_o) && !py::isinstance<py::tuple>(names_o))
              throw InvalidArgument(detail::concat(fn, ": names must be a list of object names, got ",
                                                   type_name(names_o), " ", py_bindings::safe_repr(names_o)));
            std::vector<std::string> names;
            const py::sequence seq = py::reinterpret_borrow<py::sequence>(names_o);
            for (std::size_t i = 0; i < seq.size(); ++i)
              names.push_back(str_arg(seq[i], fn, detail::concat("names[", i, "]").c_str()));
            std::vector<std::optional<std::vector<std::byte>>> got;
            {
              py::gil_scoped_release nogil;
              got = t.tier().get_many(names);
            }
            py::list out;
            for (const auto& b : got)
              out.append(b ? py::object(py::bytes(reinterpret_cast<const char*>(b->data()), b->size()))
                           : py::none());
            return out;
          },
          py::arg("names"))
      .def(
          "index_key",
          [](const PyRedisTier& t, const py::object& name) {
            return t.tier().index_key(str_arg(name, "RedisTier.index_key", "name"));
          },
          py::arg("name"))
      .def(
          "payload_key",
          [](const PyRedisTier& t, const py::object& name) -> py::object {
            const std::string n = str_arg(name, "RedisTier.payload_key", "name");
            std::string k;
            {
              py::gil_scoped_release nogil;
              k = t.tier().payload_key(n);
            }
            if (k.empty()) return py::none();
            return py::str(k);
          },
          py::arg("name"))
      .def("cluster_stats", [](const PyRedisTier& t) { return to_dict(t.client().stats()); })
      .def("masters", [](const PyRedisTier& t) { return t.client().masters(); })
      .def_property_readonly("seeds", [](const PyRedisTier& t) { return t.client().options().seeds; })
      .def_property_readonly("prefix", [](const PyRedisTier& t) { return t.tier().options().prefix; })
      .def("__repr__", [](const PyRedisTier& t) {
        std::string seeds;
        for (const std::string& s : t.client().options().seeds)
          seeds += (seeds.empty() ? "'" : ", '") + s + "'";
        return detail::concat("RedisTier(seeds=[", seeds, "], prefix='", t.tier().options().prefix, "')");
      });

  m.def(
      "redis_object_keys",
      [](const py::object& name_o, const py::object& index_o, const py::object& prefix_o) {
        constexpr const char* fn = "redis_object_keys";
        const std::string name = str_arg(name_o, fn, "name");
        const std::string prefix = str_arg(prefix_o, fn, "prefix");
        const std::string index_key = redis_index_key(prefix, name);
        const auto index = optional_bytes_arg(index_o, fn, "index_value");
        const auto nonce = index ? redis_index_nonce(name, as_view(*index)) : std::nullopt;
        const py::object payload_key =
            nonce ? py::object(py::str(redis_payload_key(prefix, name, *nonce))) : py::object(py::none());
        return py::make_tuple(payload_key, index_key);
      },
      py::arg("name"), py::arg("index_value") = py::none(), py::kw_only(), py::arg("prefix") = "redknot",
      "(payload key the index value names or None, index key) of an object; use redknot.redis_object_keys.");
  m.def(
      "encode_redis_object",
      [](const py::object& name_o, const py::object& payload_o, const py::object& nonce_o,
         const py::object& prefix_o) {
        constexpr const char* fn = "encode_redis_object";
        const std::string name = str_arg(name_o, fn, "name");
        const std::vector<std::byte> payload = bytes_arg(payload_o, fn, "payload");
        const std::uint64_t nonce = u64_arg(nonce_o, fn, "nonce");
        const std::string prefix = str_arg(prefix_o, fn, "prefix");
        const std::string payload_key = redis_payload_key(prefix, name, nonce);
        const RedisObjectValues v = encode_redis_object(name, payload, nonce);
        return py::make_tuple(payload_key, to_py_bytes(v.payload), redis_index_key(prefix, name),
                              to_py_bytes(v.index));
      },
      py::arg("name"), py::arg("payload"), py::arg("nonce"), py::kw_only(), py::arg("prefix") = "redknot",
      "(payload key, payload value, index key, index value) of one write; use redknot.encode_redis_object.");
  m.def(
      "decode_redis_object",
      [](const py::object& name_o, const py::object& payload_o, const py::object& index_o) -> py::object {
        constexpr const char* fn = "decode_redis_object";
        const std::string name = str_arg(name_o, fn, "name");
        const auto payload = optional_bytes_arg(payload_o, fn, "payload_value");
        const auto index = optional_bytes_arg(index_o, fn, "index_value");
        check_object_name(name);
        if (!payload || !index) return py::none();
        const auto b = decode_redis_object(name, as_view(*payload), as_view(*index));
        if (!b) return py::none();
        return py::bytes(reinterpret_cast<const char*>(b->data()), b->size());
      },
      py::arg("name"), py::arg("payload_value"), py::arg("index_value"),
      "The object's bytes, or None when a value is missing or fails verification.");
#else
  m.attr("HAS_REDIS") = false;
  constexpr const char* kNoRedis =
      "redknot was built without hiredis (libhiredis-dev): RedisTier and the Redis object format are not "
      "available; install hiredis and rebuild";
  struct NoRedisTier {};
  py::class_<NoRedisTier>(m, "RedisTier", "Unavailable: redknot was built without hiredis.")
      .def(py::init([kNoRedis](const py::args&, const py::kwargs&) -> std::unique_ptr<NoRedisTier> {
        throw Unavailable(kNoRedis);
      }));
  for (const char* fn : {"redis_object_keys", "encode_redis_object", "decode_redis_object"})
    m.def(fn, [kNoRedis](const py::args&, const py::kwargs&) -> py::object { throw Unavailable(kNoRedis); });
#endif

  py::class_<TierPrefetcher>(m, "TierPrefetcher", "Reads tier objects ahead on worker threads.")
      .def(py::init([](const py::object& threads) {
             return std::make_unique<TierPrefetcher>(int_arg<int>(threads, "TierPrefetcher", "threads"));
           }),
           py::arg("threads") = 2)
      .def_property_readonly("threads", &TierPrefetcher::threads);

  py::class_<AnySwapTicket>(m, "SwapTicket", "What Store.swap_in needs to restore a swapped-out sequence.")
      .def_property_readonly("bytes", &AnySwapTicket::bytes)
      .def_property_readonly("num_objects", &AnySwapTicket::num_objects)
      .def_property_readonly("num_cold_objects", &AnySwapTicket::num_cold_objects)
      .def_property_readonly("num_layers", &AnySwapTicket::num_layers)
      .def_property_readonly("used", &AnySwapTicket::used)
      .def_property_readonly("objects",
                             [](const AnySwapTicket& t) {
                               py::list out;
                               for (const SwapObject& o : t.ticket().objects) {
                                 py::dict d;
                                 d["name"] = o.name;
                                 d["layer"] = o.layer;
                                 d["local"] = o.local;
                                 d["cold"] = o.cold;
                                 d["bytes"] = o.bytes;
                                 out.append(d);
                               }
                               return out;
                             })
      .def(
          "discard",
          [](AnySwapTicket& t, const py::object& hot, const py::object& cold) {
            any_discard_swap(t, *tier_arg(hot, "SwapTicket.discard", "hot", false),
                             tier_arg(cold, "SwapTicket.discard", "cold", true));
          },
          py::arg("hot"), py::arg("cold") = py::none())
      .def("__repr__", [](const AnySwapTicket& t) {
        return detail::concat("SwapTicket(objects=", t.num_objects(), ", cold_objects=", t.num_cold_objects(),
                              ", bytes=", t.bytes(), ", used=", t.used() ? "True" : "False", ")");
      });

  py::class_<PyChunkTiers>(m, "TieredChunkCache",
                           "A store's chunk registry over a stack of tiers; made by Store.chunk_tiers.")
      .def(
          "make_room",
          [](PyChunkTiers& c, const py::object& pages) {
            const auto n = int_arg<std::int64_t>(pages, "TieredChunkCache.make_room", "pages");
            py::gil_scoped_release nogil;
            return c.impl->make_room(n);
          },
          py::arg("pages"))
      .def(
          "demote",
          [](PyChunkTiers& c, const py::object& key) {
            const ChunkKey k = key_arg(key, "TieredChunkCache.demote");
            py::gil_scoped_release nogil;
            return c.impl->demote(k);
          },
          py::arg("key"))
      .def(
          "lookup",
          [](PyChunkTiers& c, const py::object& key) -> py::object {
            const ChunkKey k = key_arg(key, "TieredChunkCache.lookup");
            std::int32_t n = -1;
            {
              py::gil_scoped_release nogil;
              n = c.impl->lookup(k);
            }
            if (n < 0) return py::none();
            return py::int_(n);
          },
          py::arg("key"))
      .def(
          "prefetch",
          [](PyChunkTiers& c, const py::object& key) {
            return c.impl->prefetch(key_arg(key, "TieredChunkCache.prefetch"));
          },
          py::arg("key"))
      .def(
          "in_tiers",
          [](const PyChunkTiers& c, const py::object& key) {
            return c.impl->in_tiers(key_arg(key, "TieredChunkCache.in_tiers"));
          },
          py::arg("key"))
      .def("stats", [](const PyChunkTiers& c) { return to_dict(c.impl->stats()); })
      .def_property_readonly("tiers", [](const PyChunkTiers& c) { return c.tiers; })
      .def_property_readonly("store", [](const PyChunkTiers& c) { return c.store; });

  m.def(
      "select_recompute",
      [](const py::object& strategy, const py::object& ratio, const py::object& first_k,
         const py::object& n_tokens, const py::object& deviation, const py::object& head_is_local,
         const py::object& query_attention) {
        constexpr const char* fn = "select_recompute";
        RecomputeConfig cfg{parse_recompute_strategy(str_arg(strategy, fn, "strategy")),
                            float_arg(ratio, fn, "ratio"), int_arg<int>(first_k, fn, "first_k")};
        RecomputeInputs in;
        in.n_tokens = int_arg<std::int32_t>(n_tokens, fn, "n_tokens");
        const auto local = int_array_arg<std::int32_t>(head_is_local, fn, "head_is_local");
        std::vector<HeadPolicy> heads(static_cast<std::size_t>(local.size()));
        for (std::size_t h = 0; h < heads.size(); ++h)
          if (local.data()[h]) heads[h] = HeadPolicy{HeadClass::kLocal, 1, 0};
        in.policies = heads;
        std::optional<py::array_t<float, py::array::c_style>> dev, qa;
        if (!deviation.is_none())
          in.deviation = float_span(dev.emplace(float32_array_arg(deviation, fn, "deviation")));
        if (!query_attention.is_none())
          in.query_attention =
              float_span(qa.emplace(float32_array_arg(query_attention, fn, "query_attention")));
        return to_numpy(select_recompute(cfg, in));
      },
      py::arg("strategy"), py::arg("ratio"), py::arg("first_k"), py::arg("n_tokens"), py::arg("deviation"),
      py::arg("head_is_local"), py::arg("query_attention"),
      "Sorted token indices of a chunk to recompute (recompute.hpp); use redknot.select_recompute.");
  m.def(
      "kv_deviation",
      [](const py::object& kf, const py::object& vf, const py::object& kc, const py::object& vc,
         const py::object& n, const py::object& kvh, const py::object& hd) {
        constexpr const char* fn = "kv_deviation";
        const auto a = float32_array_arg(kf, fn, "k_fresh");
        const auto b = float32_array_arg(vf, fn, "v_fresh");
        const auto c = float32_array_arg(kc, fn, "k_cached");
        const auto d = float32_array_arg(vc, fn, "v_cached");
        return to_numpy(kv_deviation(float_span(a), float_span(b), float_span(c), float_span(d),
                                     int_arg<std::int32_t>(n, fn, "n"), int_arg<int>(kvh, fn, "num_kv_heads"),
                                     int_arg<int>(hd, fn, "head_dim")));
      },
      py::arg("k_fresh"), py::arg("v_fresh"), py::arg("k_cached"), py::arg("v_cached"), py::arg("n"),
      py::arg("num_kv_heads"), py::arg("head_dim"),
      "Per-(token, kv_head) deviation; use redknot.kv_deviation.");
  m.def("live_stores", &AnyStore::live_count, "Native stores alive in this process (leak checks).");
}
