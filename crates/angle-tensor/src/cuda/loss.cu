// The AnglE format-A objective (angle-emb 0.6.1, angle_emb/loss.py), forward and gradient on
// the device in one block: cosine_w * CoSENT(cos) + angle_w * CoSENT(angle) + ibn_w * in-batch
// negatives. y [2P, D] f32 in zigzag layout (rows 2k, 2k+1 are pair k), labels [P].
// Writes loss[0] and dy (overwritten); with nout >= 4 also loss[1..4] = the unweighted cosine,
// angle and in-batch values (0 for an objective whose weight is 0). `work` holds 2 (2P)^2 floats for the in-batch term.
// Derivations: docs of angle-loss; here each step names what it differentiates.

#define NORM_EPS 1e-12f

// CoSENT: L = log(1 + sum_{l_i < l_j} exp(s_i - s_j)); g_k = dL/ds_k.
__device__ float cosent(const float* s, const float* lab, float* g, int P, float* red) {
    float mx = 0.0f; // the logsumexp includes the constant 0
    for (int i = threadIdx.x; i < P; i += blockDim.x)
        for (int j = 0; j < P; j++)
            if (lab[i] < lab[j]) mx = fmaxf(mx, s[i] - s[j]);
    mx = block_max(mx, red);
    float z = 0.0f;
    for (int i = threadIdx.x; i < P; i += blockDim.x)
        for (int j = 0; j < P; j++)
            if (lab[i] < lab[j]) z += expf(s[i] - s[j] - mx);
    z = block_sum(z, red) + expf(-mx);
    const float inv = 1.0f / z;
    for (int k = threadIdx.x; k < P; k += blockDim.x) {
        float a = 0.0f;
        for (int j = 0; j < P; j++) {
            if (lab[k] < lab[j]) a += expf(s[k] - s[j] - mx);
            if (lab[j] < lab[k]) a -= expf(s[j] - s[k] - mx);
        }
        g[k] = a * inv;
    }
    __syncthreads();
    return mx + logf(z);
}

extern "C" __global__ void __launch_bounds__(1024) angle_objective(float* loss, float* dy, float* work, const float* y,
                                           const float* labels, int P, int D, float cos_w,
                                           float cos_tau, float angle_w, float angle_tau,
                                           int angle_mean, float ibn_w, float ibn_tau, int nout) {
    __shared__ float red[32];
    extern __shared__ float sh[];
    float* lab = sh;          // P
    float* nu = lab + P;      // |u_k|
    float* nv = nu + P;       // |v_k|
    float* cs = nv + P;       // cos(u_k, v_k)
    float* sc = cs + P;       // cosine scores
    float* pa = sc + P;       // angle: S / (|u||v|) (times 1/D for mean)
    float* sa = pa + P;       // angle scores
    float* gc = sa + P;       // dL/d sc
    float* ga = gc + P;       // dL/d sa
    float* rn = ga + P;       // 2P row norms (clamped), for the in-batch term
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    const int half = D / 2;
    const float fpool = angle_mean ? 1.0f / (float)D : 1.0f;
    for (int k = threadIdx.x; k < P; k += blockDim.x) lab[k] = labels[k];
    for (int k = warp; k < P; k += nwarps) {
        const float* u = y + (long long)(2 * k) * D;
        const float* v = u + D;
        float uv = 0.0f, uu = 0.0f, vv = 0.0f, S = 0.0f;
        for (int d = lane; d < D; d += 32) {
            uv += u[d] * v[d];
            uu += u[d] * u[d];
            vv += v[d] * v[d];
        }
        // (a + bi) / (c + di): sum of real and imaginary parts, up to 1/(|u||v|).
        for (int j = lane; j < half; j += 32) {
            const float a = u[j], b = u[j + half], c = v[j], e = v[j + half];
            S += a * c + b * e + b * c - a * e;
        }
        uv = warp_sum(uv);
        uu = warp_sum(uu);
        vv = warp_sum(vv);
        S = warp_sum(S);
        if (lane == 0) {
            const float a = sqrtf(uu), b = sqrtf(vv);
            nu[k] = a;
            nv[k] = b;
            cs[k] = uv / (fmaxf(a, NORM_EPS) * fmaxf(b, NORM_EPS));
            sc[k] = cos_tau * cs[k];
            pa[k] = fpool * S / (a * b);
            sa[k] = angle_tau * fabsf(pa[k]);
        }
    }
    __syncthreads();
    // part_*: each objective's unweighted value (0 where it did not run), for loss[1..4].
    float total = 0.0f, part_cos = 0.0f, part_angle = 0.0f, part_ibn = 0.0f;
    if (cos_w != 0.0f) {
        part_cos = cosent(sc, lab, gc, P, red);
        total += cos_w * part_cos;
    } else
        for (int k = threadIdx.x; k < P; k += blockDim.x) gc[k] = 0.0f;
    if (angle_w != 0.0f) {
        part_angle = cosent(sa, lab, ga, P, red);
        total += angle_w * part_angle;
    } else
        for (int k = threadIdx.x; k < P; k += blockDim.x) ga[k] = 0.0f;
    __syncthreads();
    // Gradient of the pair terms, one warp per pair.
    for (int k = warp; k < P; k += nwarps) {
        const float* u = y + (long long)(2 * k) * D;
        const float* v = u + D;
        float* du = dy + (long long)(2 * k) * D;
        float* dv = du + D;
        const float a = nu[k], b = nv[k];
        const float ua = fmaxf(a, NORM_EPS), vb = fmaxf(b, NORM_EPS);
        // d(cos)/du = v/(|u||v|) - cos u/|u|^2 (for |u| above the clamp; else v/(eps |v|)).
        const float gk = cos_w * gc[k] * cos_tau;
        const float c = cs[k];
        // d|p|/dS etc.: s = tau |f S/(|u||v|)|.
        const float p = pa[k];
        const float sg = p > 0.0f ? 1.0f : (p < 0.0f ? -1.0f : 0.0f);
        const float gak = angle_w * ga[k] * angle_tau * sg;
        const float P0 = p; // includes fpool
        const float inv_uv = fpool / (a * b);
        const float inv_uavb = 1.0f / (ua * vb), inv_a2 = 1.0f / (a * a), inv_b2 = 1.0f / (b * b);
        const float inv_eu = 1.0f / (NORM_EPS * vb), inv_ev = 1.0f / (NORM_EPS * ua);
        for (int d = lane; d < D; d += 32) {
            float gu = 0.0f, gv = 0.0f;
            if (gk != 0.0f) {
                gu += gk * (a > NORM_EPS ? v[d] * inv_uavb - c * u[d] * inv_a2 : v[d] * inv_eu);
                gv += gk * (b > NORM_EPS ? u[d] * inv_uavb - c * v[d] * inv_b2 : u[d] * inv_ev);
            }
            if (gak != 0.0f) {
                float dSu, dSv;
                if (d < half) { // u: a_j, v: c_j
                    const float e = v[d + half], bb = u[d + half];
                    dSu = v[d] - e;
                    dSv = u[d] + bb;
                } else { // u: b_j, v: d_j
                    const int j = d - half;
                    dSu = v[d] + v[j];
                    dSv = u[d] - u[j];
                }
                gu += gak * (dSu * inv_uv - P0 * u[d] * inv_a2);
                gv += gak * (dSv * inv_uv - P0 * v[d] * inv_b2);
            }
            du[d] = gu;
            dv[d] = gv;
        }
    }
    __syncthreads();
    if (ibn_w != 0.0f) {
        // In-batch negatives: rows i, j (of 2P) with integer labels y_i, y_j (the pair's label);
        // target_ij = 1 where j is i's partner and the label is nonzero (angle-emb's make_target).
        const int R = 2 * P;
        for (int r = warp; r < R; r += nwarps) {
            const float* x = y + (long long)r * D;
            float s = 0.0f;
            for (int d = lane; d < D; d += 32) s += x[d] * x[d];
            s = warp_sum(s);
            if (lane == 0) rn[r] = fmaxf(sqrtf(s), NORM_EPS);
        }
        __syncthreads();
        for (int idx = warp; idx < R * R; idx += nwarps) {
            const int i = idx / R, j = idx % R;
            const float* xi = y + (long long)i * D;
            const float* xj = y + (long long)j * D;
            float s = 0.0f;
            for (int d = lane; d < D; d += 32) s += xi[d] * xj[d];
            s = warp_sum(s);
            if (lane == 0) work[idx] = ibn_tau * s / (rn[i] * rn[j]);
        }
        __syncthreads();
        float lsum = 0.0f;
        for (int i = warp; i < R; i += nwarps) {
            float* row = work + (long long)i * R;
            const int yi = (int)lab[i / 2];
            const int partner = i + 1 - (i % 2) * 2;
            float mx = -ANGLE_INF;
            for (int j = lane; j < R; j += 32)
                if (j != i) mx = fmaxf(mx, row[j]);
            mx = warp_max(mx);
            float z = 0.0f;
            for (int j = lane; j < R; j += 32)
                if (j != i) z += expf(row[j] - mx);
            z = warp_sum(z);
            const float lz = logf(z);
            float li = 0.0f, tsum = 0.0f;
            for (int j = lane; j < R; j += 32) {
                const int yj = (int)lab[j / 2];
                const float t = (yi != 0 && yj != 0 && j * yj == partner * yi) ? 1.0f : 0.0f;
                if (t != 0.0f) {
                    li -= row[j] - mx - lz; // j != i: i's partner is never i
                    tsum += t;
                }
            }
            li = warp_sum(li);
            tsum = warp_sum(tsum);
            __syncwarp();
            for (int j = lane; j < R; j += 32) {
                const int yj = (int)lab[j / 2];
                const float t = (yi != 0 && yj != 0 && j * yj == partner * yi) ? 1.0f : 0.0f;
                const float sm = (j != i) ? expf(row[j] - mx - lz) : 0.0f;
                row[j] = ibn_w * ibn_tau * (sm * tsum - t) / (float)R; // dL/d(cos_ij)
            }
            if (lane == 0) lsum += li;
        }
        lsum = block_sum(lane == 0 ? lsum : 0.0f, red);
        part_ibn = lsum / (float)R;
        total += ibn_w * part_ibn;
        __syncthreads();
        // dn_i = sum_j (G_ij + G_ji) n_j; dy_i += (dn_i - n_i (n_i . dn_i)) / |y_i|.
        // M = G + G^T scaled by 1/|y_j| goes to the second half of `work` (no division in the
        // inner loops: this block is the whole grid).
        float* M = work + (long long)R * R;
        for (int idx = threadIdx.x; idx < R * R; idx += blockDim.x) {
            const int i = idx / R, j = idx % R;
            M[idx] = (work[idx] + work[(long long)j * R + i]) / rn[j];
        }
        __syncthreads();
        for (int i = warp; i < R; i += nwarps) {
            const float* xi = y + (long long)i * D;
            const float* mi = M + (long long)i * R;
            float* gi = dy + (long long)i * D;
            const float ri = 1.0f / rn[i];
            float proj = 0.0f;
            for (int d = lane; d < D; d += 32) {
                float dn = 0.0f;
                for (int j = 0; j < R; j++) dn += mi[j] * y[(long long)j * D + d];
                proj += dn * xi[d];
            }
            proj = warp_sum(proj) * ri;
            for (int d = lane; d < D; d += 32) {
                float dn = 0.0f;
                for (int j = 0; j < R; j++) dn += mi[j] * y[(long long)j * D + d];
                gi[d] += (dn - proj * xi[d] * ri) * ri;
            }
        }
    }
    if (threadIdx.x == 0) {
        loss[0] = total;
        if (nout >= 4) {
            loss[1] = part_cos;
            loss[2] = part_angle;
            loss[3] = part_ibn;
        }
    }
}
