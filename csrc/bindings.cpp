// The only Python-facing file. Every numpy buffer is checked and converted
// here, once, with the GIL held; the C++ core then runs with the GIL released
// and writes into output arrays allocated beforehand. Semantic errors in the
// core are std::invalid_argument, which pybind11 raises as ValueError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <utility>
#include <vector>

#include "packer.hpp"
#include "selection.hpp"

namespace py = pybind11;

namespace {

using I64Array = py::array_t<int64_t, py::array::c_style>;
using F64Array = py::array_t<double, py::array::c_style>;

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(a.shape(i));
  }
  if (a.ndim() == 1) s += ",";
  return s + ")";
}

// Lists are accepted through numpy.asarray, but the dtype must already be the
// exact one: a silent cast (float -> int, int32 -> int64) would hide caller bugs.
template <typename T>
py::array_t<T, py::array::c_style> as_array(py::handle obj, const char* name, const char* dtype_name,
                                            py::ssize_t ndim, py::ssize_t last_dim = -1) {
  py::array arr = py::isinstance<py::array>(obj)
                      ? py::reinterpret_borrow<py::array>(obj)
                      : py::array(py::module_::import("numpy").attr("asarray")(obj));
  if (!arr.dtype().equal(py::dtype::of<T>()))
    throw py::value_error(std::string(name) + " must have dtype " + dtype_name + ", got " +
                          py::str(arr.dtype()).cast<std::string>());
  if (arr.ndim() != ndim)
    throw py::value_error(std::string(name) + " must be " + std::to_string(ndim) +
                          "-dimensional, got shape " + shape_str(arr));
  if (last_dim >= 0 && arr.shape(ndim - 1) != last_dim)
    throw py::value_error(std::string(name) + " must have shape (n, " + std::to_string(last_dim) +
                          "), got " + shape_str(arr));
  // Same dtype: this only copies when the input is not C-contiguous.
  return py::array_t<T, py::array::c_style>::ensure(arr);
}

I64Array as_i64(py::handle obj, const char* name, py::ssize_t ndim, py::ssize_t last_dim = -1) {
  return as_array<int64_t>(obj, name, "int64", ndim, last_dim);
}

std::vector<int64_t> to_vector(const I64Array& a) {
  return std::vector<int64_t>(a.data(), a.data() + a.size());
}

I64Array new_i64(std::vector<py::ssize_t> shape) { return I64Array(std::move(shape)); }

I64Array vector_to_array(const std::vector<int64_t>& v) {
  I64Array out(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

bf::Strategy parse_strategy(const std::string& s) {
  for (auto st : {bf::Strategy::Bubble, bf::Strategy::Tournament, bf::Strategy::Swiss, bf::Strategy::KnockoutRR,
                  bf::Strategy::Adaptive})
    if (s == bf::strategy_name(st)) return st;
  // Same wording as options.check_choice over options.SELECTOR_STRATEGIES (a test keeps them in step).
  throw py::value_error("strategy must be one of ('bubble', 'tournament', 'swiss', 'knockout_rr', 'adaptive'), got '" +
                        s + "'");
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "blender-fast native core";
  m.attr("__version__") = BLENDER_FAST_VERSION;

  py::class_<bf::PairPacker>(m, "PairPacker", R"doc(
Packs PairRM input rows from pre-tokenized texts.

tokens: int64[N], all pieces ``[CLS] <prefix> ... [SEP]`` concatenated;
offsets: int64[n_texts+1], piece t is tokens[offsets[t]:offsets[t+1]];
limits: int64[n_texts], per-text truncation length (>= prefix_offset+2).
A piece longer than its limit keeps its first limit-1 tokens plus its last
token (HF right truncation with special tokens). A pair row (src, a, b) packs
src ++ a ++ b, with the token at prefix_offset of a / b replaced by
cand1_id / cand2_id. The buffers are copied.
)doc")
      .def(py::init([](py::object tokens, py::object offsets, py::object limits, int64_t cand1_id,
                       int64_t cand2_id, int64_t pad_id, int64_t prefix_offset) {
             auto t = as_i64(tokens, "tokens", 1);
             auto o = as_i64(offsets, "offsets", 1);
             auto l = as_i64(limits, "limits", 1);
             return new bf::PairPacker(to_vector(t), to_vector(o), to_vector(l), cand1_id, cand2_id,
                                       pad_id, prefix_offset);
           }),
           py::arg("tokens"), py::arg("offsets"), py::arg("limits"), py::kw_only(),
           py::arg("cand1_id"), py::arg("cand2_id"), py::arg("pad_id"), py::arg("prefix_offset") = 1)
      .def_property_readonly("n_texts", &bf::PairPacker::n_texts)
      .def_property_readonly("cand1_id", &bf::PairPacker::cand1_id)
      .def_property_readonly("cand2_id", &bf::PairPacker::cand2_id)
      .def_property_readonly("pad_id", &bf::PairPacker::pad_id)
      .def_property_readonly("prefix_offset", &bf::PairPacker::prefix_offset)
      .def(
          "lengths",
          [](const bf::PairPacker& self, py::object pairs) {
            auto pr = as_i64(pairs, "pairs", 2, 3);
            const int64_t P = pr.shape(0);
            auto out = new_i64({P});
            const int64_t* pp = pr.data();
            int64_t* po = out.mutable_data();
            {
              py::gil_scoped_release nogil;
              self.lengths(pp, P, po);
            }
            return out;
          },
          py::arg("pairs"), "lengths(pairs: int64[P,3]) -> int64[P]: packed length of each pair row.")
      .def(
          "plan",
          [](const bf::PairPacker& self, py::object pairs, int64_t token_budget, int64_t max_batch_size,
             int64_t group_size, int64_t batch_cost) {
            auto pr = as_i64(pairs, "pairs", 2, 3);
            const int64_t P = pr.shape(0);
            const int64_t* pp = pr.data();
            bf::BatchPlan plan;
            {
              py::gil_scoped_release nogil;
              plan = self.plan(pp, P, token_budget, max_batch_size, group_size, batch_cost);
            }
            return py::make_tuple(vector_to_array(plan.order), vector_to_array(plan.bounds));
          },
          py::arg("pairs"), py::arg("token_budget"), py::arg("max_batch_size"), py::arg("group_size") = 1,
          py::arg("batch_cost") = 64,
          R"doc(plan(pairs, token_budget, max_batch_size, group_size=1, batch_cost=64) -> (order int64[P], bounds int64[B+1])

Rows form consecutive groups of group_size (P must be a multiple; use 2 so
both orders of a comparison share a batch). Groups are sorted by their longest
row (stable) and cut into contiguous batches with rows*longest <= token_budget
and rows <= max_batch_size (a lone group over budget gets its own batch).
The cut minimizes computed tokens (rows*longest per batch) + batch_cost per
batch, ties to fewer batches: a pad token costs as much as a real one, a model
call costs batch_cost tokens (small on CPU, large on GPU). Batches come shortest first; batch i is order[bounds[i]:bounds[i+1]];
a group's rows stay adjacent and in their original order. Deterministic.)doc")
      .def(
          "build",
          [](const bf::PairPacker& self, py::object pairs, py::object rows) {
            auto pr = as_i64(pairs, "pairs", 2, 3);
            auto rw = as_i64(rows, "rows", 1);
            const int64_t P = pr.shape(0), mrows = rw.shape(0);
            const int64_t* pp = pr.data();
            const int64_t* pw = rw.data();
            int64_t T;
            {
              py::gil_scoped_release nogil;
              T = self.max_length(pp, P, pw, mrows);
            }
            auto ids = new_i64({mrows, T});
            auto mask = new_i64({mrows, T});
            auto pos = new_i64({mrows, 3});
            int64_t* pi = ids.mutable_data();
            int64_t* pm = mask.mutable_data();
            int64_t* ps = pos.mutable_data();
            int64_t pad;
            {
              py::gil_scoped_release nogil;
              pad = self.build(pp, pw, mrows, T, pi, pm, ps);
            }
            return py::make_tuple(ids, mask, pos, pad);
          },
          py::arg("pairs"), py::arg("rows"),
          R"doc(build(pairs, rows) -> (input_ids int64[m,T], attention_mask int64[m,T], positions int64[m,3], n_pad int)

Packs pair rows pairs[rows] right-padded with pad_id to T = the longest of
them. positions = (source prefix, candidate-1 prefix, candidate-2 prefix);
n_pad = m*T - attention_mask.sum(), the pad tokens of this batch.)doc")
      .def(
          "pad_tokens",
          [](const bf::PairPacker& self, py::object pairs, py::object order, py::object bounds) {
            auto pr = as_i64(pairs, "pairs", 2, 3);
            auto od = as_i64(order, "order", 1);
            auto bd = as_i64(bounds, "bounds", 1);
            const int64_t P = pr.shape(0), no = od.shape(0), nb = bd.shape(0);
            const int64_t *pp = pr.data(), *po = od.data(), *pb = bd.data();
            int64_t pad;
            {
              py::gil_scoped_release nogil;
              pad = self.pad_tokens(pp, P, po, no, pb, nb);
            }
            return pad;
          },
          py::arg("pairs"), py::arg("order"), py::arg("bounds"),
          "pad_tokens(pairs, order, bounds) -> int: pad tokens the batches of a plan would carry.");

  m.def(
      "min_budget",
      [](const std::string& strategy, int64_t n, int64_t top_k) {
        const bf::Strategy st = parse_strategy(strategy);
        if (!bf::is_budgeted(st)) throw py::value_error("min_budget applies to swiss, knockout_rr and adaptive");
        return bf::min_budget(st, n, top_k);
      },
      py::arg("strategy"), py::arg("n"), py::arg("top_k"),
      "Fewest comparisons (not forward passes) the strategy accepts for top_k of n candidates.");

  py::class_<bf::Selector>(m, "Selector", R"doc(
Best-k selection for many prompts in lockstep.

Selector(n_candidates: int64[P], top_k: int, strategy: 'bubble'|'tournament'|'swiss'|
'knockout_rr'|'adaptive', initial_orders: list of P int64 permutations, budgets: int64[P] or
None). budgets: comparisons per prompt (not forward passes), required by swiss / knockout_rr /
adaptive, which never exceed it; None for bubble / tournament. Drive it with
``while not s.done(): rows = s.next(); s.feed(scores_for(rows))``.
next() -> int64[m,3] rows (prompt, a, b), a standing earlier in the
arrangement; feed(float64[m]): score>0 a wins, <0 b wins, ==0 the lower
candidate index wins; NaN raises ValueError (and so does an infinite score for the
budgeted strategies, whose ratings add margins up).
)doc")
      .def(py::init([](py::object n_candidates, int64_t top_k, const std::string& strategy,
                       py::sequence initial_orders, py::object budgets) {
             auto n = as_i64(n_candidates, "n_candidates", 1);
             const bf::Strategy st = parse_strategy(strategy);
             std::vector<std::vector<int64_t>> orders;
             orders.reserve(py::len(initial_orders));
             for (size_t i = 0; i < py::len(initial_orders); ++i) {
               const std::string name = "initial_orders[" + std::to_string(i) + "]";
               orders.push_back(to_vector(as_i64(initial_orders[i], name.c_str(), 1)));
             }
             std::vector<int64_t> b;
             if (!budgets.is_none()) b = to_vector(as_i64(budgets, "budgets", 1));
             return new bf::Selector(to_vector(n), top_k, st, orders, b);
           }),
           py::arg("n_candidates"), py::arg("top_k"), py::arg("strategy"), py::arg("initial_orders"),
           py::arg("budgets") = py::none())
      .def_property_readonly("n_prompts", &bf::Selector::n_prompts)
      .def_property_readonly("k", &bf::Selector::k)
      .def_property_readonly("strategy", [](const bf::Selector& s) { return bf::strategy_name(s.strategy()); })
      .def("done", &bf::Selector::done, "True once every prompt has its top-k.")
      .def(
          "next",
          [](bf::Selector& self) {
            std::vector<bf::Comparison> rows;
            {
              py::gil_scoped_release nogil;
              rows = self.next();
            }
            auto out = new_i64({static_cast<py::ssize_t>(rows.size()), 3});
            int64_t* po = out.mutable_data();
            for (size_t i = 0; i < rows.size(); ++i) {
              po[3 * i] = rows[i].prompt;
              po[3 * i + 1] = rows[i].a;
              po[3 * i + 2] = rows[i].b;
            }
            return out;
          },
          "next() -> int64[m,3]: every comparison ready now, as (prompt, a, b); answer with feed().")
      .def(
          "feed",
          [](bf::Selector& self, py::object scores) {
            auto sc = as_array<double>(scores, "scores", "float64", 1);
            const double* ps = sc.data();
            const int64_t mrows = sc.shape(0);
            py::gil_scoped_release nogil;
            self.feed(ps, mrows);
          },
          py::arg("scores"), "feed(scores: float64[m]): one score per row of the last next(), same order.")
      .def("top_k", &bf::Selector::top_k, py::arg("prompt"), "Candidate indices, best first.")
      .def("comparisons", &bf::Selector::comparisons, py::arg("prompt"),
           "Comparisons decided by the model (memo hits excluded).")
      .def("steps", &bf::Selector::steps, py::arg("prompt"),
           "Number of next() rounds in which the prompt had at least one comparison.")
      .def(
          "log",
          [](const bf::Selector& self, int64_t p) {
            py::list out;
            for (const auto& e : self.log(p)) out.append(py::make_tuple(e[0], e[1], e[2]));
            return out;
          },
          py::arg("prompt"), "log(prompt) -> list[(a, b, winner)] in resolution order.");
}
