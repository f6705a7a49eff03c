// The _redknot extension module: pybind11 bindings of HeadMap and AnyStore.
//
// This layer stays thin: tensors come in through DLPack (dlpack_import.hpp) and go straight to AnyStore,
// which does every check; metadata arrays arrive as int32/int64 numpy arrays prepared by the pure-Python
// wrapper (redknot/_store.py). The GIL is released around appends and attention so that independent stores
// run in parallel from Python threads.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "dlpack_import.hpp"
#include "redknot/any_store.hpp"
#include "redknot/error.hpp"
#include "redknot/head_map.hpp"
#include "redknot/pool_sizing.hpp"
#include "redknot/version.hpp"

namespace py = pybind11;
using namespace redknot;
using py_bindings::ImportedTensor;

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
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const InvalidArgument& e) {
      PyErr_SetString(invalid.ptr(), e.what());
    } catch (const NotFound& e) {
      PyErr_SetString(not_found.ptr(), e.what());
    } catch (const PoolExhausted& e) {
      PyErr_SetString(exhausted.ptr(), e.what());
    } catch (const Unavailable& e) {
      PyErr_SetString(unavailable.ptr(), e.what());
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
          "from_json", [](const std::string& text) { return HeadMap::from_json(text); }, py::arg("text"))
      .def_static(
          "load",
          [](const py::object& path) {
            return HeadMap::load(py::str(py::module_::import("os").attr("fspath")(path)));
          },
          py::arg("path"))
      .def_static("all_global", &HeadMap::all_global, py::arg("num_layers"), py::arg("num_kv_heads"))
      .def_static(
          "uniform",
          [](int L, int H, const std::string& cls, int window, int sink) {
            return HeadMap::uniform(L, H, parse_head_class(cls), window, sink);
          },
          py::arg("num_layers"), py::arg("num_kv_heads"), py::arg("cls"), py::arg("window") = -1,
          py::arg("sink") = 0)
      .def_static("with_global_ratio", &HeadMap::with_global_ratio, py::arg("num_layers"),
                  py::arg("num_kv_heads"), py::arg("global_ratio"), py::arg("window"), py::arg("sink"))
      .def("to_json", &HeadMap::to_json, py::arg("indent") = 2)
      .def(
          "save",
          [](const HeadMap& h, const py::object& path) {
            h.save(py::str(py::module_::import("os").attr("fspath")(path)));
          },
          py::arg("path"))
      .def_property_readonly("num_layers", &HeadMap::num_layers)
      .def_property_readonly("num_kv_heads", &HeadMap::num_kv_heads)
      .def_property_readonly("dense_prefix_layers", &HeadMap::dense_prefix_layers)
      .def_property_readonly("retrieval_top_p", &HeadMap::retrieval_top_p)
      .def("policy", &HeadMap::policy, py::arg("layer"), py::arg("kv_head"))
      .def("raw", &HeadMap::raw, py::arg("layer"), py::arg("kv_head"))
      .def(
          "set",
          [](HeadMap& h, int layer, int kv_head, const std::string& cls, int window, int sink) {
            const HeadClass c = parse_head_class(cls);
            HeadPolicy p{c, c == HeadClass::kLocal ? window : -1, sink};
            require(c != HeadClass::kLocal || window >= 1, "set: window=", window,
                    " must be >= 1 for a local head");
            require(sink >= 0, "set: sink=", sink, " must be >= 0");
            h.set(layer, kv_head, p);
          },
          py::arg("layer"), py::arg("kv_head"), py::arg("cls"), py::arg("window") = -1, py::arg("sink") = 0)
      .def("set_dense_prefix_layers", &HeadMap::set_dense_prefix_layers, py::arg("n"))
      .def("count_local", &HeadMap::count_local)
      .def("count_global_like", &HeadMap::count_global_like)
      .def("global_ratio", &HeadMap::global_ratio)
      .def(
          "peak_sequence_pages",
          [](const HeadMap& m, int page_size, std::int64_t num_tokens, std::int64_t chunk) {
            return peak_sequence_pages(m, page_size, num_tokens, chunk);
          },
          py::arg("page_size"), py::arg("num_tokens"), py::arg("chunk"),
          "Pages to reserve per sequence for num_tokens positions appended in chunks of at most `chunk`.")
      .def("validate", &HeadMap::validate)
      .def("__eq__", [](const HeadMap& a, const HeadMap& b) { return a == b; })
      .def("__copy__", [](const HeadMap& h) { return HeadMap(h); })
      .def("__deepcopy__", [](const HeadMap& h, const py::object&) { return HeadMap(h); })
      .def(py::pickle([](const HeadMap& h) { return h.to_json(-1); },
                      [](const std::string& s) { return HeadMap::from_json(s); }))
      .def("__repr__", [](const HeadMap& h) {
        return detail::concat("HeadMap(num_layers=", h.num_layers(), ", num_kv_heads=", h.num_kv_heads(),
                              ", local=", h.count_local(), ", global_like=", h.count_global_like(), ")");
      });

  // ---- stores ------------------------------------------------------------------------------------------
  py::class_<AnyStore>(m, "_Store", "Native store; use redknot.Store.")
      .def(py::init([](int num_layers, int num_q_heads, int num_kv_heads, int head_dim,
                       const std::string& dtype, const HeadMap& map, int page_size, std::int32_t num_pages,
                       const std::string& device) {
             ModelShape shape{num_layers, num_q_heads, num_kv_heads, head_dim, parse_dtype(dtype)};
             return make_store(shape, map, StoreConfig{page_size, num_pages}, parse_device(device));
           }),
           py::arg("num_layers"), py::arg("num_q_heads"), py::arg("num_kv_heads"), py::arg("head_dim"),
           py::arg("dtype"), py::arg("head_map"), py::arg("page_size"), py::arg("num_pages"),
           py::arg("device"))
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
      .def("fork", &AnyStore::fork, py::arg("parent"))
      .def("free_sequence", &AnyStore::free_sequence, py::arg("seq"))
      .def("contains", &AnyStore::contains, py::arg("seq"))
      .def("sequences", &AnyStore::sequences)
      .def("next_position", &AnyStore::next_position, py::arg("seq"), py::arg("layer"))
      .def("query_floor", &AnyStore::query_floor, py::arg("seq"), py::arg("layer"))
      .def("retire_queries", &AnyStore::retire_queries, py::arg("seq"), py::arg("next_query_pos"),
           py::arg("layer") = -1)
      .def(
          "page_table",
          [](const AnyStore& s, SeqId id, int layer, int kv_head) {
            std::vector<py::tuple> rows;
            for (const PageEntry& e : s.table(id, layer, kv_head))
              rows.push_back(py::make_tuple(e.page_id, e.first, e.count, e.pos0));
            return rows;
          },
          py::arg("seq"), py::arg("layer"), py::arg("kv_head"))
      .def(
          "append",
          [](AnyStore& s, SeqId id, int layer, const py::handle& k, const py::handle& v,
             const CArray<std::int32_t>& positions) {
            const auto pos = span_of(positions, "positions");
            const ImportedTensor kt(k, "k", false);
            const ImportedTensor vt(v, "v", false);
            py::gil_scoped_release nogil;
            s.append(id, layer, kt.tensor(), vt.tensor(), pos);
          },
          py::arg("seq"), py::arg("layer"), py::arg("k"), py::arg("v"), py::arg("positions"))
      .def(
          "plan",
          [](AnyStore& s, const CArray<std::int64_t>& seq_ids, const CArray<std::int32_t>& q_lens,
             const CArray<std::int32_t>& q_positions) {
            s.plan(span_of(seq_ids, "seq_ids"), span_of(q_lens, "q_lens"),
                   span_of(q_positions, "q_positions"));
          },
          py::arg("seq_ids"), py::arg("q_lens"), py::arg("q_positions"))
      .def("planned_queries", &AnyStore::planned_queries)
      .def(
          "run",
          [](AnyStore& s, int layer, const py::handle& q, const py::handle& out, const py::object& lse,
             float sm_scale, int num_threads) {
            const ImportedTensor qt(q, "q", false);
            const ImportedTensor ot(out, "out", true);
            std::optional<ImportedTensor> lt;
            if (!lse.is_none()) lt.emplace(lse, "lse", true);
            AttentionParams params;
            params.scale = sm_scale;
            params.num_threads = num_threads;
            py::gil_scoped_release nogil;
            s.run(layer, qt.tensor(), ot.tensor(), lt ? lt->get() : nullptr, params);
          },
          py::arg("layer"), py::arg("q"), py::arg("out"), py::arg("lse"), py::arg("sm_scale"),
          py::arg("num_threads"))
      .def(
          "kv_pool_capsule",
          [](const py::object& self, bool versioned) {
            return pool_capsule(self, self.cast<const AnyStore&>().kv_pool(), versioned);
          },
          py::arg("versioned"))
      .def("stats", [](const AnyStore& s) { return to_dict(s.stats()); })
      .def(
          "sequence_stats", [](const AnyStore& s, SeqId id) { return to_dict(s.sequence_stats(id)); },
          py::arg("seq"))
      .def("pages_per_sequence", &AnyStore::pages_per_sequence, py::arg("num_tokens"))
      .def("sequences_that_fit", &AnyStore::sequences_that_fit, py::arg("num_tokens"))
      .def(
          "export_page_table",
          [](const AnyStore& s, int layer, const CArray<std::int64_t>& seq_ids) {
            const PageTableCsr csr = s.export_page_table(layer, span_of(seq_ids, "seq_ids"));
            return py::make_tuple(to_numpy(csr.indptr), to_numpy(csr.indices), to_numpy(csr.last_page_len),
                                  to_numpy(csr.page_pos0));
          },
          py::arg("layer"), py::arg("seq_ids"));

  m.def("live_stores", &AnyStore::live_count, "Native stores alive in this process (leak checks).");
}
