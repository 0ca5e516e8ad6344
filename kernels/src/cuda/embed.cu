// Embedding lookup: token rows, plus learned absolute positions where the model has them
// (GPT-BigCode). Token ids and the first position are read from device memory so a captured
// decode graph replays unchanged while they vary.
#include "common.cuh"

// x[t][i] = table[tokens[t]][i] (+ positions[*pos0 + t][i]); one block per token.
extern "C" __global__ void embed(const f16_t* __restrict__ table, const f16_t* __restrict__ positions,
                                 const int* __restrict__ tokens, const int* __restrict__ pos0,
                                 float* __restrict__ x, int dim, int vocab, int n_positions) {
    pdl_wait();
    const int t = blockIdx.x;
    // Ids were checked by the engine; clamping keeps a bad one inside the table.
    const int tok = min(max(tokens[t], 0), vocab - 1);
    const int pos = min(*pos0 + t, n_positions - 1);
    const f16_t* row = table + (size_t)tok * dim;
    const f16_t* prow = positions ? positions + (size_t)pos * dim : 0;
    float* out = x + (size_t)t * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float v = h2f(row[i]);
        if (prow) v += h2f(prow[i]);
        out[i] = v;
    }
}
