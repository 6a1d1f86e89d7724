"""The numba kernels of geomedian.py, imported when a geomedian is first asked for (this module
imports numba). They live at module level, calling one another as globals: numba's cache does
not find a kernel that reaches its helpers through a closure, which would then be compiled
afresh, for seconds, in every worker process. Their constants are here too, since numba's cache
is invalidated by a change to this file only."""

import numba
import numpy as np

from .kernels import SPAN

# Weiszfeld: a point this close to the estimate (relative to the estimate's norm) counts as the
# estimate sitting on it, and the iteration takes Vardi and Zhang's step rather than dividing by ~0
COINCIDENT = 1e-12
# Weiszfeld: every this many iterations, test whether the data point nearest the estimate is the
# optimum (the iteration converges on such a point only sublinearly)
CHECK_EVERY = 8
# The geomedian pads each pixel's observations to a multiple of this (float64 SIMD lanes), so its
# elementwise loops run over whole vectors without a remainder or a branch
LANES = 8


@numba.njit(nogil=True, cache=True, error_model="numpy")
def gather(bands, y, x0, x1, chunk):
    # a span of one row, transposed to (band, pixel, time): each pixel's series contiguous
    for b in range(len(bands)):
        band = bands[b]
        for j in range(band.shape[0]):
            for x in range(x0, x1):
                chunk[b, x - x0, j] = band[j, y, x]


@numba.njit(nogil=True, cache=True, error_model="numpy")
def clear_at(chunk, c, j, sentinels, use_sentinel, is_float):
    # observation j of pixel c is clear in every band
    for b in range(chunk.shape[0]):
        v = chunk[b, c, j]
        if (use_sentinel[b] and v == sentinels[b]) or (is_float and v != v):
            return False
    return True


# no `reassoc`: LLVM would vectorise the sums over observations, but their rounding then varied
# between builds of the kernel for other dtypes and between threads, and a pixel's result must
# not depend on those; no `nnan`, so NaN tests stay exact. numpy's error model, so that a
# division is not a branch (which stops LLVM vectorising the elementwise loops)
FAST = {"contract", "arcp", "nsz"}


@numba.njit(nogil=True, cache=True, fastmath=FAST, error_model="numpy")
def data_point_is_optimal(pts, k, m, w):
    # Vardi and Zhang: x_m minimises the sum of distances iff the unit vectors from it to the
    # other points add up to a vector no longer than the number of points at x_m
    nb = pts.shape[0]
    for i in range(k):
        w[i] = 0.0
    for b in range(nb):
        e = pts[b, m]
        for i in range(k):
            d = pts[b, i] - e
            w[i] += d * d
    eta = 0
    for i in range(k):
        if w[i] > 0.0:
            w[i] = 1.0 / np.sqrt(w[i])
        else:
            eta += 1
    r2 = 0.0
    for b in range(nb):
        e = pts[b, m]
        s = 0.0
        for i in range(k):
            s += (pts[b, i] - e) * w[i]
        r2 += s * s
    return r2 <= eta * eta


@numba.njit(nogil=True, cache=True, fastmath=FAST, error_model="numpy")
def weiszfeld(pts, valid, k, kp, est, d2, w, num, max_iter, tol):
    # Weiszfeld's iteration from est over the points pts[:, :k], with Vardi and Zhang's step
    # where the estimate sits on data points. Columns k..kp of pts are padding with valid 0,
    # so that the loops run over whole SIMD vectors without a branch. Returns the iterations.
    nb = pts.shape[0]
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        norm2 = 0.0
        for b in range(nb):
            norm2 += est[b] * est[b]
        near2 = COINCIDENT * COINCIDENT * max(norm2, 1.0)
        for i in range(kp):
            d2[i] = 0.0
        for b in range(nb):
            e = est[b]
            for i in range(kp):
                d = pts[b, i] - e
                d2[i] += d * d
        for i in range(kp):
            far = 1.0 if d2[i] > near2 else 0.0
            w[i] = valid[i] * far / np.sqrt(max(d2[i], near2))
        den = 0.0
        eta = 0.0
        for i in range(kp):
            den += w[i]
            eta += valid[i] if d2[i] <= near2 else 0.0
        if den == 0.0:  # every clear observation is where the estimate is
            break
        r2 = 0.0
        for b in range(nb):
            s = 0.0
            for i in range(kp):
                s += pts[b, i] * w[i]
            num[b] = s / den
            rb = s - den * est[b]  # the pull of the other points: sum of w_i (x_i - y)
            r2 += rb * rb
        keep = 0.0
        if eta > 0.0:  # on eta data points: move only as far as the others' pull exceeds them
            r = np.sqrt(r2)
            keep = min(1.0, eta / r) if r > 0.0 else 1.0
        step2 = 0.0
        new2 = 0.0
        for b in range(nb):
            new = (1.0 - keep) * num[b] + keep * est[b]
            step2 += (new - est[b]) ** 2
            new2 += new * new
            est[b] = new
        if step2 <= tol * tol * max(new2, 1.0):
            break
        if n_iter % CHECK_EVERY == 0:
            closest = 0
            for i in range(1, k):
                if d2[i] < d2[closest]:
                    closest = i
            if data_point_is_optimal(pts, k, closest, w):
                for b in range(nb):
                    est[b] = pts[b, closest]
                break
    return n_iter


@numba.njit(nogil=True, cache=True, error_model="numpy")
def geomedian_rows(bands, sentinels, use_sentinel, is_float, r0, r1, max_iter, tol, out, iters):
    # Roberts et al. (2017): over the observations clear in every band, from their mean
    nb = len(bands)
    t, _, nx = bands[0].shape
    width = LANES * max(1, (t + LANES - 1) // LANES)
    chunk = np.empty((nb, SPAN, max(t, 1)))
    pts = np.zeros((nb, width))
    valid = np.zeros(width)
    d2 = np.empty(width)
    w = np.empty(width)
    est = np.empty(nb)
    num = np.empty(nb)
    for y in range(r0, r1):
        for x0 in range(0, nx, SPAN):
            x1 = min(x0 + SPAN, nx)
            gather(bands, y, x0, x1, chunk)
            for x in range(x0, x1):
                c = x - x0
                k = 0
                for j in range(t):
                    if clear_at(chunk, c, j, sentinels, use_sentinel, is_float):
                        for b in range(nb):
                            pts[b, k] = chunk[b, c, j]
                        k += 1
                if k == 0:
                    for b in range(nb):
                        out[b, y, x] = np.nan
                    iters[y, x] = 0
                    continue
                kp = LANES * ((k + LANES - 1) // LANES)
                for i in range(kp):
                    valid[i] = 1.0 if i < k else 0.0
                for b in range(nb):
                    total = 0.0
                    for i in range(k):
                        total += pts[b, i]
                    est[b] = total / k
                    for i in range(k, kp):
                        pts[b, i] = 0.0
                n_iter = 0
                if k == 1:  # the one clear observation, exactly
                    for b in range(nb):
                        est[b] = pts[b, 0]
                else:
                    n_iter = weiszfeld(pts, valid, k, kp, est, d2, w, num, max_iter, tol)
                for b in range(nb):
                    out[b, y, x] = est[b]
                iters[y, x] = n_iter


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _median(buf, k):
    for i in range(1, k):  # insertion sort: k is a period's count of clear observations
        v = buf[i]
        j = i
        while j > 0 and buf[j - 1] > v:
            buf[j] = buf[j - 1]
            j -= 1
        buf[j] = v
    if k % 2 == 1:
        return buf[k // 2]
    return (buf[k // 2 - 1] + buf[k // 2]) / 2.0


@numba.njit(nogil=True, cache=True, error_model="numpy")
def mads_rows(bands, sentinels, use_sentinel, is_float, gm, r0, r1, out):
    nb = len(bands)
    t, _, nx = bands[0].shape
    chunk = np.empty((nb, SPAN, max(t, 1)))
    spectral = np.empty(max(t, 1))
    euclid = np.empty(max(t, 1))
    bray = np.empty(max(t, 1))
    for y in range(r0, r1):
        for x0 in range(0, nx, SPAN):
            x1 = min(x0 + SPAN, nx)
            gather(bands, y, x0, x1, chunk)
            for x in range(x0, x1):
                c = x - x0
                gnorm2 = 0.0
                for b in range(nb):
                    gnorm2 += gm[b, y, x] * gm[b, y, x]
                k = 0
                for j in range(t):
                    if not clear_at(chunk, c, j, sentinels, use_sentinel, is_float):
                        continue
                    dot = 0.0
                    norm2 = 0.0
                    d2 = 0.0
                    diff = 0.0
                    total = 0.0
                    for b in range(nb):
                        v = chunk[b, c, j]
                        g = gm[b, y, x]
                        dot += v * g
                        norm2 += v * v
                        d2 += (v - g) ** 2
                        diff += abs(v - g)
                        total += abs(v + g)
                    denom = np.sqrt(norm2 * gnorm2)
                    spectral[k] = 1.0 - dot / denom if denom > 0.0 else 0.0
                    euclid[k] = np.sqrt(d2)
                    bray[k] = diff / total if total > 0.0 else 0.0
                    k += 1
                if k == 0 or gnorm2 != gnorm2:
                    out[0, y, x] = np.nan
                    out[1, y, x] = np.nan
                    out[2, y, x] = np.nan
                    continue
                out[0, y, x] = _median(spectral, k)
                out[1, y, x] = _median(euclid, k)
                out[2, y, x] = _median(bray, k)
