/* The recorder's per-batch bookkeeping for one layer on the CPU, in one read of the layer's activations.
 *
 * Built on first use by neuron_explainer/activations/native.py with the system C compiler and called through
 * ctypes; without a compiler the recorder does the same work with torch operations (accumulate.py), and both
 * give the same top-k lists and activations (statistics differ only by float summation order).
 *
 * Activations are [batch, positions, neurons] with unit stride along neurons (any batch and position strides),
 * float32 or bfloat16 (flag bf16); bfloat16 widens to float32 exactly. The statistics and the top-k merges of a
 * window run back to back, so the rows that enter a list are copied while the window is still in cache.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

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

/* One position's row of `neurons` values as float32: the data itself, or `buffer` holding the widened copy. */
static inline const float *row_as_float(const void *data, int bf16, int64_t offset, int64_t neurons, float *buffer) {
    if (!bf16) return (const float *)data + offset;
    const uint16_t *row = (const uint16_t *)data + offset;
    for (int64_t n = 0; n < neurons; n++) buffer[n] = widen_bf16(row[n]);
    return buffer;
}

/* Fold one position's values into the window's per-neuron extremes and sums (inlined into each target clone). */
static inline __attribute__((always_inline)) void fold_row(const float *restrict x, int64_t neurons,
                                                          float *restrict high, float *restrict low,
                                                          float *restrict sum, float *restrict squares,
                                                          float *restrict count) {
    for (int64_t n = 0; n < neurons; n++) {
        float value = x[n];
        high[n] = value > high[n] ? value : high[n];
        low[n] = value < low[n] ? value : low[n];
        sum[n] += value;
        squares[n] += value * value;
        count[n] += value > 0.0f ? 1.0f : 0.0f;
    }
}

/* Insert window `window_id` with `score` into one neuron's list (scores sorted descending, ids, slots: rank -> row
 * slot) when it beats the k-th: after every listed window with an equal or better score, so ties keep the earlier
 * window exactly as the stable sort of the torch path does. The leaving window's row slot is returned (-1: no entry). */
static inline int64_t insert(float score, int64_t window_id, int64_t k, float *scores, int64_t *ids, int64_t *slots) {
    if (!(score > scores[k - 1])) return -1;
    int64_t rank = k - 1;
    while (rank > 0 && scores[rank - 1] < score) rank--;
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

/* Fold one batch of `neurons` neurons (a column range of the layer: every per-neuron pointer starts at its first
 * neuron) into the running totals and the top-k lists, window by window:
 * - per neuron: sum, sum of squares and count of positive values (each window summed in float32 over positions,
 *   then added in float64, as the torch path does), minimum and maximum;
 * - top lists (scores [neurons, k] by window max, ids, slots, rows [neurons, k, positions]) and, when bottom_scores
 *   is not NULL, bottom lists by negated window min. A window's rows are copied right after its statistics, while
 *   its activations are still in cache.
 * Returns 0, or -1 when out of memory. */
CLONES
int fold_batch(const void *data, int bf16, int64_t batch, int64_t positions, int64_t neurons, int64_t stride_b,
               int64_t stride_p, double *total, double *total_squares, double *positives, float *minimum,
               float *maximum, int64_t k, int64_t first_window_id, float *top_scores, int64_t *top_ids,
               int64_t *top_slots, float *top_rows, float *bottom_scores, int64_t *bottom_ids, int64_t *bottom_slots,
               float *bottom_rows) {
    float *scratch = malloc(sizeof(float) * 6 * (size_t)neurons);
    if (scratch == NULL) return -1;
    float *high = scratch, *low = scratch + neurons, *sum = scratch + 2 * neurons;
    float *squares = scratch + 3 * neurons, *count = scratch + 4 * neurons;
    float *buffer = scratch + 5 * neurons;
    for (int64_t b = 0; b < batch; b++) {
        for (int64_t n = 0; n < neurons; n++) {
            high[n] = -INFINITY;
            low[n] = INFINITY;
            sum[n] = squares[n] = count[n] = 0.0f;
        }
        for (int64_t p = 0; p < positions; p++)
            fold_row(row_as_float(data, bf16, b * stride_b + p * stride_p, neurons, buffer), neurons, high, low, sum,
                     squares, count);
        for (int64_t n = 0; n < neurons; n++) {
            total[n] += sum[n];
            total_squares[n] += squares[n];
            positives[n] += count[n];
            maximum[n] = high[n] > maximum[n] ? high[n] : maximum[n];
            minimum[n] = low[n] < minimum[n] ? low[n] : minimum[n];
        }
        for (int64_t n = 0; n < neurons; n++) {
            int64_t slot = insert(high[n], first_window_id + b, k, top_scores + n * k, top_ids + n * k,
                                  top_slots + n * k);
            if (slot >= 0)
                copy_row(data, bf16, b * stride_b + n, positions, stride_p, top_rows + (n * k + slot) * positions);
            if (bottom_scores == NULL) continue;
            slot = insert(-low[n], first_window_id + b, k, bottom_scores + n * k, bottom_ids + n * k,
                          bottom_slots + n * k);
            if (slot >= 0)
                copy_row(data, bf16, b * stride_b + n, positions, stride_p, bottom_rows + (n * k + slot) * positions);
        }
    }
    free(scratch);
    return 0;
}
