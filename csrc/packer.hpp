// Pair packer: turns (source, candidate A, candidate B) text triples into the
// padded id/mask/position tensors PairRM reads, and plans length-bucketed
// batches. Plain C++17, no Python: the binding layer owns buffer conversion.
#pragma once

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace bf {

struct BatchPlan {
  std::vector<int64_t> order;   // row indices, batch after batch
  std::vector<int64_t> bounds;  // batch i is order[bounds[i]:bounds[i+1]]
};

class PairPacker {
 public:
  PairPacker(std::vector<int64_t> tokens, std::vector<int64_t> offsets,
             std::vector<int64_t> limits, int64_t cand1_id, int64_t cand2_id,
             int64_t pad_id, int64_t prefix_offset)
      : tokens_(std::move(tokens)),
        offsets_(std::move(offsets)),
        limits_(std::move(limits)),
        cand1_id_(cand1_id),
        cand2_id_(cand2_id),
        pad_id_(pad_id),
        prefix_offset_(prefix_offset) {
    if (prefix_offset_ < 0)
      fail("prefix_offset must be >= 0, got " + std::to_string(prefix_offset_));
    if (offsets_.empty()) fail("offsets must have n_texts+1 >= 1 entries, got an empty array");
    const int64_t n = static_cast<int64_t>(offsets_.size()) - 1;
    if (static_cast<int64_t>(limits_.size()) != n)
      fail("limits must have one entry per text (" + std::to_string(n) + "), got " +
           std::to_string(limits_.size()));
    if (offsets_[0] != 0) fail("offsets[0] must be 0, got " + std::to_string(offsets_[0]));
    const int64_t ntok = static_cast<int64_t>(tokens_.size());
    if (offsets_[n] != ntok)
      fail("offsets[-1] must equal len(tokens) = " + std::to_string(ntok) + ", got " +
           std::to_string(offsets_[n]));
    const int64_t min_piece = prefix_offset_ + 2;  // [CLS] .. prefix .. [SEP]
    eff_len_.resize(static_cast<size_t>(n));
    for (int64_t t = 0; t < n; ++t) {
      const int64_t lo = offsets_[t], hi = offsets_[t + 1];
      if (hi < lo)
        fail("offsets must be non-decreasing, but offsets[" + std::to_string(t + 1) + "] = " +
             std::to_string(hi) + " < offsets[" + std::to_string(t) + "] = " + std::to_string(lo));
      if (hi > ntok)
        fail("offsets[" + std::to_string(t + 1) + "] = " + std::to_string(hi) +
             " is beyond the token buffer (len " + std::to_string(ntok) + ")");
      if (hi - lo < min_piece)
        fail("text " + std::to_string(t) + " has " + std::to_string(hi - lo) +
             " tokens; every piece needs at least prefix_offset+2 = " + std::to_string(min_piece) +
             " ([CLS], prefix, [SEP])");
      if (limits_[t] < min_piece)
        fail("limits[" + std::to_string(t) + "] = " + std::to_string(limits_[t]) +
             " is too small; it must be >= prefix_offset+2 = " + std::to_string(min_piece));
      eff_len_[t] = std::min(hi - lo, limits_[t]);
    }
  }

  int64_t n_texts() const { return static_cast<int64_t>(eff_len_.size()); }
  int64_t cand1_id() const { return cand1_id_; }
  int64_t cand2_id() const { return cand2_id_; }
  int64_t pad_id() const { return pad_id_; }
  int64_t prefix_offset() const { return prefix_offset_; }

  // Throws on the first pair row that names a text outside [0, n_texts).
  void check_pairs(const int64_t* pairs, int64_t P) const {
    const int64_t n = n_texts();
    for (int64_t i = 0; i < 3 * P; ++i) {
      if (pairs[i] < 0 || pairs[i] >= n)
        fail("pairs[" + std::to_string(i / 3) + ", " + std::to_string(i % 3) + "] = " +
             std::to_string(pairs[i]) + " is out of range for " + std::to_string(n) + " texts");
    }
  }

  // Callers must have run check_pairs on the pair array.
  int64_t row_length(const int64_t* pairs, int64_t row) const {
    const int64_t* r = pairs + 3 * row;
    return eff_len_[r[0]] + eff_len_[r[1]] + eff_len_[r[2]];
  }

  void lengths(const int64_t* pairs, int64_t P, int64_t* out) const {
    check_pairs(pairs, P);
    for (int64_t i = 0; i < P; ++i) out[i] = row_length(pairs, i);
  }

  // Groups (consecutive runs of group_size rows) are sorted by their longest
  // row and cut into contiguous batches. The cut minimizes the tokens the
  // model computes, rows*longest summed over batches, plus batch_cost tokens
  // per batch (the fixed cost of one model call, in token-equivalents): on a
  // CPU a pad token costs as much as a real one and a call almost nothing
  // (batch_cost ~ 16), on a GPU calls dominate (batch_cost ~ thousands). Ties
  // go to fewer batches. A DP over the sorted groups does it in
  // O(groups * width), width = most groups a batch can hold; if that is
  // pathologically large (huge budgets with unbounded batch size) it falls
  // back to the ascending greedy cut (fewest batches).
  BatchPlan plan(const int64_t* pairs, int64_t P, int64_t token_budget, int64_t max_batch_size,
                 int64_t group_size, int64_t batch_cost) const {
    if (group_size < 1) fail("group_size must be >= 1, got " + std::to_string(group_size));
    if (token_budget < 1) fail("token_budget must be >= 1, got " + std::to_string(token_budget));
    if (batch_cost < 0 || batch_cost > kMaxBatchCost)
      fail("batch_cost must be in [0, " + std::to_string(kMaxBatchCost) + "], got " + std::to_string(batch_cost));
    if (max_batch_size < group_size)
      fail("max_batch_size (" + std::to_string(max_batch_size) + ") must be >= group_size (" +
           std::to_string(group_size) + ")");
    if (P % group_size != 0)
      fail("the number of pair rows (" + std::to_string(P) + ") is not a multiple of group_size (" +
           std::to_string(group_size) + ")");
    check_pairs(pairs, P);

    const int64_t G = P / group_size;
    std::vector<int64_t> glen(static_cast<size_t>(G));
    for (int64_t g = 0; g < G; ++g) {
      int64_t m = 0;
      for (int64_t r = g * group_size; r < (g + 1) * group_size; ++r)
        m = std::max(m, row_length(pairs, r));
      glen[g] = m;
    }
    std::vector<int64_t> sorted(static_cast<size_t>(G));
    std::iota(sorted.begin(), sorted.end(), int64_t{0});
    std::stable_sort(sorted.begin(), sorted.end(),
                     [&](int64_t x, int64_t y) { return glen[x] < glen[y]; });

    // width[i]: most groups a batch whose last (longest) group is sorted[i-1]
    // may hold; a lone oversized group is still allowed (width >= 1).
    std::vector<int64_t> width(static_cast<size_t>(G) + 1, 1);
    const int64_t max_groups = max_batch_size / group_size;
    int64_t work = 0;
    for (int64_t i = 1; i <= G; ++i) {
      const int64_t L = std::max<int64_t>(glen[sorted[i - 1]], 1);
      width[i] = std::max<int64_t>(1, std::min(max_groups, (token_budget / L) / group_size));
      work += std::min(width[i], i);
    }

    std::vector<int64_t> cut;  // batch end positions in sorted order
    if (work <= kMaxDpWork) {
      // fc[i]: cheapest cost of the first i sorted groups; fb[i]: its batch count.
      std::vector<int64_t> fb(static_cast<size_t>(G) + 1, 0), fc(static_cast<size_t>(G) + 1, 0),
          from(static_cast<size_t>(G) + 1, 0);
      for (int64_t i = 1; i <= G; ++i) {
        const int64_t L = glen[sorted[i - 1]];
        const int64_t lo = std::max<int64_t>(0, i - width[i]);
        int64_t best_c = -1, best_b = 0, best_j = lo;
        for (int64_t j = lo; j < i; ++j) {
          const int64_t c = fc[j] + (i - j) * group_size * L + batch_cost;
          if (best_c < 0 || c < best_c || (c == best_c && fb[j] + 1 < best_b)) {
            best_c = c;
            best_b = fb[j] + 1;
            best_j = j;
          }
        }
        fb[i] = best_b;
        fc[i] = best_c;
        from[i] = best_j;
      }
      for (int64_t i = G; i > 0; i = from[i]) cut.push_back(i);
      std::reverse(cut.begin(), cut.end());
    } else {
      int64_t start = 0;
      for (int64_t i = 1; i <= G; ++i) {
        if (i - start > width[i]) {
          cut.push_back(i - 1);
          start = i - 1;
        }
      }
      if (G > 0) cut.push_back(G);
    }

    BatchPlan out;
    out.order.reserve(static_cast<size_t>(P));
    out.bounds.reserve(cut.size() + 1);
    out.bounds.push_back(0);
    int64_t s = 0;
    for (int64_t e : cut) {
      for (int64_t i = s; i < e; ++i)
        for (int64_t r = sorted[i] * group_size; r < (sorted[i] + 1) * group_size; ++r)
          out.order.push_back(r);
      out.bounds.push_back(static_cast<int64_t>(out.order.size()));
      s = e;
    }
    return out;
  }

  // Longest packed length among `rows` (0 for no rows); validates everything.
  int64_t max_length(const int64_t* pairs, int64_t P, const int64_t* rows, int64_t m) const {
    check_pairs(pairs, P);
    check_rows(rows, m, P, "rows");
    int64_t T = 0;
    for (int64_t i = 0; i < m; ++i) T = std::max(T, row_length(pairs, rows[i]));
    return T;
  }

  // Fills [m, T] ids/mask and [m, 3] positions and returns the pad count.
  // T must be >= max_length(...), through which the caller validated pairs and rows.
  int64_t build(const int64_t* pairs, const int64_t* rows, int64_t m, int64_t T, int64_t* ids,
                int64_t* mask, int64_t* positions) const {
    int64_t pad = 0;
    for (int64_t i = 0; i < m; ++i) {
      const int64_t* r = pairs + 3 * rows[i];
      int64_t* id_row = ids + i * T;
      int64_t* mask_row = mask + i * T;
      int64_t pos = 0;
      pos = copy_piece(r[0], id_row, pos, false, 0);
      const int64_t len_src = pos;
      pos = copy_piece(r[1], id_row, pos, true, cand1_id_);
      const int64_t len_a = pos - len_src;
      pos = copy_piece(r[2], id_row, pos, true, cand2_id_);
      std::fill(mask_row, mask_row + pos, int64_t{1});
      std::fill(mask_row + pos, mask_row + T, int64_t{0});
      std::fill(id_row + pos, id_row + T, pad_id_);
      positions[3 * i + 0] = prefix_offset_;
      positions[3 * i + 1] = len_src + prefix_offset_;
      positions[3 * i + 2] = len_src + len_a + prefix_offset_;
      pad += T - pos;
    }
    return pad;
  }

  // Pad tokens a plan would produce: sum over batches of rows*longest - real.
  int64_t pad_tokens(const int64_t* pairs, int64_t P, const int64_t* order, int64_t n_order,
                     const int64_t* bounds, int64_t n_bounds) const {
    check_pairs(pairs, P);
    check_rows(order, n_order, P, "order");
    if (n_bounds < 1) fail("bounds must have at least one entry");
    if (bounds[0] != 0) fail("bounds[0] must be 0, got " + std::to_string(bounds[0]));
    if (bounds[n_bounds - 1] != n_order)
      fail("bounds[-1] must equal len(order) = " + std::to_string(n_order) + ", got " +
           std::to_string(bounds[n_bounds - 1]));
    int64_t pad = 0;
    for (int64_t b = 0; b + 1 < n_bounds; ++b) {
      if (bounds[b + 1] < bounds[b])
        fail("bounds must be non-decreasing, but bounds[" + std::to_string(b + 1) + "] < bounds[" +
             std::to_string(b) + "]");
      int64_t longest = 0, real = 0;
      for (int64_t i = bounds[b]; i < bounds[b + 1]; ++i) {
        const int64_t L = row_length(pairs, order[i]);
        longest = std::max(longest, L);
        real += L;
      }
      pad += longest * (bounds[b + 1] - bounds[b]) - real;
    }
    return pad;
  }

 private:
  // A DP of ~64M inner steps is well under a second; beyond that the
  // padding it saves is not worth the planning time.
  static constexpr int64_t kMaxDpWork = int64_t{1} << 26;
  // Keeps fc[] far from overflow: groups * (budget + batch_cost) < 2^63.
  static constexpr int64_t kMaxBatchCost = int64_t{1} << 40;

  [[noreturn]] static void fail(const std::string& msg) { throw std::invalid_argument(msg); }

  static void check_rows(const int64_t* rows, int64_t m, int64_t P, const char* name) {
    for (int64_t i = 0; i < m; ++i)
      if (rows[i] < 0 || rows[i] >= P)
        fail(std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(rows[i]) +
             " is out of range for " + std::to_string(P) + " pair rows");
  }

  // HF right-truncation with special tokens keeps the head and re-appends the
  // closing [SEP], hence "first limit-1 tokens + last token".
  int64_t copy_piece(int64_t t, int64_t* dst, int64_t pos, bool mark, int64_t prefix) const {
    const int64_t lo = offsets_[t], len = offsets_[t + 1] - lo, eff = eff_len_[t];
    const int64_t* src = tokens_.data() + lo;
    if (eff == len) {
      std::copy(src, src + len, dst + pos);
    } else {
      std::copy(src, src + eff - 1, dst + pos);
      dst[pos + eff - 1] = src[len - 1];
    }
    if (mark) dst[pos + prefix_offset_] = prefix;
    return pos + eff;
  }

  std::vector<int64_t> tokens_, offsets_, limits_, eff_len_;
  int64_t cand1_id_, cand2_id_, pad_id_, prefix_offset_;
};

}  // namespace bf
