/* The recorder's per-batch bookkeeping for one layer on the CPU, in one read of the layer's activations.
 *
 * Built on first use by neuron_explainer/activations/native.py with the system C compiler and called through
 * ctypes; without a compiler the recorder does the same work with torch operations (accumulate.py), and both
 * give the same top-k lists and activations (statistics differ only by float summation order).
 *
 * Activations are [batch, positions, neurons] with unit stride along neurons (any batch and position strides),
 * float32 or bfloat16 (flag bf16); bfloat16 widens to float32 exactly. The statistics and the top-k merges of a
 * block of neurons run back to back, so the rows that enter a list are copied while the block is still in cache;
 * rows and samples are written with non-temporal stores, as they are read only when the recording ends.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

/* One build runs at the widest vectors of whichever x86-64 CPU loads it (the library is cached per machine, but a
 * home directory may be shared by several). */
#if defined(__x86_64__) && (defined(__clang__) || __GNUC__ >= 6)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif

static inline float widen_bf16(uint16_t value) {
    uint32_t bits = (uint32_t)value << 16;
    float result;
    memcpy(&result, &bits, sizeof result);
    return result;
}

/* Write `count` floats with non-temporal stores where the target is 16-byte aligned: the top-k rows and the samples
 * are read only when the recording ends, so their lines are neither read before being written nor kept in cache,
 * where they would push out the model's weights and activations. */
static inline void write_through(float *target, const float *source, int64_t count) {
#if defined(__SSE2__)
    int64_t n = 0;
    for (; n < count && ((uintptr_t)(target + n) & 15); n++) target[n] = source[n];
    for (; n + 4 <= count; n += 4) _mm_stream_ps(target + n, _mm_loadu_ps(source + n));
    for (; n < count; n++) target[n] = source[n];
#else
    memcpy(target, source, sizeof(float) * count);
#endif
}

/* Orders the non-temporal stores before whatever follows (they are weakly ordered). */
static inline void write_fence(void) {
#if defined(__SSE2__)
    _mm_sfence();
#endif
}

/* Neurons per block: a block's running values stay in registers or L1 across a window's positions, and the block's
 * activations are still in L1 when its entering rows are copied. */
#define BLOCK 64

/* One window's extremes and sums over positions for `width` neurons starting at `offset` (inlined into each target
 * clone, with `bf16` and a full block's width constant). */
static inline __attribute__((always_inline)) void fold_block(const void *data, int bf16, int64_t offset,
                                                            int64_t positions, int64_t stride_p, int64_t width,
                                                            float *restrict high, float *restrict low,
                                                            float *restrict sum, float *restrict squares,
                                                            float *restrict count) {
    for (int64_t j = 0; j < width; j++) {
        high[j] = -INFINITY;
        low[j] = INFINITY;
        sum[j] = squares[j] = count[j] = 0.0f;
    }
    float widened[BLOCK];
    for (int64_t p = 0; p < positions; p++) {
        const float *restrict x = widened;
        if (bf16) {
            const uint16_t *half = (const uint16_t *)data + offset + p * stride_p;
            for (int64_t j = 0; j < width; j++) widened[j] = widen_bf16(half[j]);
        } else {
            x = (const float *)data + offset + p * stride_p;
        }
        for (int64_t j = 0; j < width; j++) {
            float value = x[j];
            high[j] = value > high[j] ? value : high[j];
            low[j] = value < low[j] ? value : low[j];
            sum[j] += value;
            squares[j] += value * value;
            count[j] += value > 0.0f ? 1.0f : 0.0f;
        }
    }
}

/* Insert window `window_id` with `score` into one neuron's list (scores sorted descending, ids, slots: rank -> row
 * slot) when it beats the k-th: after every listed window with an equal or better score, so ties keep the earlier
 * window exactly as the stable sort of the torch path does. The leaving window's row slot is returned (-1: no entry). */
static inline int64_t insert(float score, int64_t window_id, int64_t k, float *scores, int64_t *ids, int64_t *slots) {
    if (!(score > scores[k - 1])) return -1;
    int64_t rank = 0, last = k - 1;  /* the first rank whose score is lower: binary search of a descending list */
    while (rank < last) {
        int64_t middle = (rank + last) / 2;
        if (scores[middle] < score)
            last = middle;
        else
            rank = middle + 1;
    }
    int64_t slot = slots[k - 1];
    int64_t moved = k - 1 - rank;
    memmove(scores + rank + 1, scores + rank, sizeof(float) * moved);
    memmove(ids + rank + 1, ids + rank, sizeof(int64_t) * moved);
    memmove(slots + rank + 1, slots + rank, sizeof(int64_t) * moved);
    scores[rank] = score;
    ids[rank] = window_id;
    slots[rank] = slot;
    return slot;
}

static inline void copy_row(const void *data, int bf16, int64_t offset, int64_t positions, int64_t stride_p,
                            float *row) {
    if (bf16) {
        const uint16_t *source = (const uint16_t *)data + offset;
        for (int64_t p = 0; p < positions; p++) row[p] = widen_bf16(source[p * stride_p]);
    } else {
        const float *source = (const float *)data + offset;
        for (int64_t p = 0; p < positions; p++) row[p] = source[p * stride_p];
    }
}

/* Copy a row that entered a list: gathered from the activations (in L1) into a buffer, then written with
 * non-temporal stores (see write_through). */
static inline void enter_row(const void *data, int bf16, int64_t offset, int64_t positions, int64_t stride_p,
                             float *row) {
    float buffer[256] __attribute__((aligned(64)));
    if (positions > 256) {
        copy_row(data, bf16, offset, positions, stride_p, row);
        return;
    }
    copy_row(data, bf16, offset, positions, stride_p, buffer);
    write_through(row, buffer, positions);
}

/* Statistics and top-k merges of one window for the `width` neurons from `first` on (see fold_batch). */
static inline __attribute__((always_inline)) void fold_window_block(
        const void *data, int bf16, int64_t b, int64_t first, int64_t width, int64_t positions, int64_t stride_b,
        int64_t stride_p, double *total, double *total_squares, double *positives, float *minimum, float *maximum,
        int64_t k, int64_t window_id, float *top_scores, int64_t *top_ids, int64_t *top_slots, float *top_rows,
        float *bottom_scores, int64_t *bottom_ids, int64_t *bottom_slots, float *bottom_rows) {
    float high[BLOCK], low[BLOCK], sum[BLOCK], squares[BLOCK], count[BLOCK];
    fold_block(data, bf16, b * stride_b + first, positions, stride_p, width, high, low, sum, squares, count);
    for (int64_t j = 0; j < width; j++) {
        int64_t n = first + j;
        total[n] += sum[j];
        total_squares[n] += squares[j];
        positives[n] += count[j];
        maximum[n] = high[j] > maximum[n] ? high[j] : maximum[n];
        minimum[n] = low[j] < minimum[n] ? low[j] : minimum[n];
    }
    for (int64_t j = 0; j < width; j++) {
        int64_t n = first + j;
        int64_t slot = insert(high[j], window_id, k, top_scores + n * k, top_ids + n * k, top_slots + n * k);
        if (slot >= 0)
            enter_row(data, bf16, b * stride_b + n, positions, stride_p, top_rows + (n * k + slot) * positions);
        if (bottom_scores == NULL) continue;
        slot = insert(-low[j], window_id, k, bottom_scores + n * k, bottom_ids + n * k, bottom_slots + n * k);
        if (slot >= 0)
            enter_row(data, bf16, b * stride_b + n, positions, stride_p, bottom_rows + (n * k + slot) * positions);
    }
}

/* Fold one batch of `neurons` neurons (a column range of the layer: every per-neuron pointer starts at its first
 * neuron) into the running totals and the top-k lists, block by block of neurons and, within a block, window by
 * window:
 * - per neuron: sum, sum of squares and count of positive values (each window summed in float32 over positions,
 *   then added in float64, as the torch path does), minimum and maximum;
 * - top lists (scores [neurons, k] by window max, ids, slots, rows [neurons, k, positions]) and, when bottom_scores
 *   is not NULL, bottom lists by negated window min.
 * Each neuron sees the windows in id order, so each list ends as the torch path's stable sort leaves it. Taking a
 * block's windows one after another keeps the block's lists in cache for the whole batch. */
CLONES
void fold_batch(const void *data, int bf16, int64_t batch, int64_t positions, int64_t neurons, int64_t stride_b,
               int64_t stride_p, double *total, double *total_squares, double *positives, float *minimum,
               float *maximum, int64_t k, int64_t first_window_id, float *top_scores, int64_t *top_ids,
               int64_t *top_slots, float *top_rows, float *bottom_scores, int64_t *bottom_ids, int64_t *bottom_slots,
               float *bottom_rows) {
    for (int64_t first = 0; first < neurons; first += BLOCK) {
        int64_t width = neurons - first < BLOCK ? neurons - first : BLOCK;
        for (int64_t b = 0; b < batch; b++) {
#define FOLD(BF16, WIDTH)                                                                                          \
    fold_window_block(data, BF16, b, first, WIDTH, positions, stride_b, stride_p, total, total_squares, positives, \
                      minimum, maximum, k, first_window_id + b, top_scores, top_ids, top_slots, top_rows,          \
                      bottom_scores, bottom_ids, bottom_slots, bottom_rows)
            if (bf16) {
                if (width == BLOCK) FOLD(1, BLOCK); else FOLD(1, width);
            } else {
                if (width == BLOCK) FOLD(0, BLOCK); else FOLD(0, width);
            }
#undef FOLD
        }
    }
}

static inline void copy_contiguous(const void *data, int bf16, int64_t offset, int64_t count, float *restrict target) {
    if (!bf16) {
        write_through(target, (const float *)data + offset, count);
        return;
    }
    const uint16_t *source = (const uint16_t *)data + offset;
    float buffer[BLOCK] __attribute__((aligned(64)));
    for (int64_t first = 0; first < count; first += BLOCK) {
        int64_t width = count - first < BLOCK ? count - first : BLOCK;
        for (int64_t n = 0; n < width; n++) buffer[n] = widen_bf16(source[first + n]);
        write_through(target + first, buffer, width);
    }
}

/* The batch's entries into the shared samples for `neurons` neurons (a column range, as in fold_batch; `row_width`:
 * the layer's neurons, the samples' row length), straight from the activations: whole windows (window_offsets
 * within the batch) into random [slots, positions, row_width], and single positions (token_offsets:
 * window * positions + position) into token_sample [slots, row_width]. */
CLONES
void copy_samples(const void *data, int bf16, int64_t positions, int64_t neurons, int64_t row_width,
                  int64_t stride_b, int64_t stride_p, const int64_t *window_offsets, const int64_t *window_slots,
                  int64_t windows, float *random, const int64_t *token_offsets, const int64_t *token_slots,
                  int64_t tokens, float *token_sample) {
    for (int64_t i = 0; i < windows; i++)
        for (int64_t p = 0; p < positions; p++)
            copy_contiguous(data, bf16, window_offsets[i] * stride_b + p * stride_p, neurons,
                            random + (window_slots[i] * positions + p) * row_width);
    for (int64_t i = 0; i < tokens; i++)
        copy_contiguous(data, bf16, token_offsets[i] / positions * stride_b + token_offsets[i] % positions * stride_p,
                        neurons, token_sample + token_slots[i] * row_width);
}

/* One layer's whole batch: fold_batch and copy_samples over `parts` column ranges of whole 64-byte vectors, run at
 * once on the OpenMP threads of the process (built with -fopenmp, they are torch's own, already awake after the
 * forward pass: a separate thread pool would wait for them to stop spinning). Arguments as in those two. */
void record_layer(const void *data, int bf16, int64_t batch, int64_t positions, int64_t neurons, int64_t stride_b,
                  int64_t stride_p, double *total, double *total_squares, double *positives, float *minimum,
                  float *maximum, int64_t k, int64_t first_window_id, float *top_scores, int64_t *top_ids,
                  int64_t *top_slots, float *top_rows, float *bottom_scores, int64_t *bottom_ids,
                  int64_t *bottom_slots, float *bottom_rows, const int64_t *window_offsets,
                  const int64_t *window_slots, int64_t windows, float *random, const int64_t *token_offsets,
                  const int64_t *token_slots, int64_t tokens, float *token_sample, int64_t parts) {
    int64_t step = ((neurons + (parts > 1 ? parts : 1) - 1) / (parts > 1 ? parts : 1) + 15) / 16 * 16;
    int64_t ranges = (neurons + step - 1) / step;
    int64_t element = bf16 ? 2 : 4;
#pragma omp parallel for num_threads(ranges) schedule(static, 1)
    for (int64_t range = 0; range < ranges; range++) {
        int64_t first = range * step, width = neurons - first < step ? neurons - first : step;
        const void *columns = (const char *)data + first * element;
        int both = bottom_scores != NULL;
        fold_batch(columns, bf16, batch, positions, width, stride_b, stride_p, total + first, total_squares + first,
                   positives + first, minimum + first, maximum + first, k, first_window_id, top_scores + first * k,
                   top_ids + first * k, top_slots + first * k, top_rows + first * k * positions,
                   both ? bottom_scores + first * k : NULL, both ? bottom_ids + first * k : NULL,
                   both ? bottom_slots + first * k : NULL, both ? bottom_rows + first * k * positions : NULL);
        copy_samples(columns, bf16, positions, width, neurons, stride_b, stride_p, window_offsets, window_slots,
                     windows, random + first, token_offsets, token_slots, tokens, token_sample + first);
        write_fence();
    }
}
