"""Every numba kernel of gridded, at module level, calling one another as globals: numba's cache
does not find a kernel that reaches its helpers through a closure, which would then be compiled
afresh, for seconds, in every worker process. This module imports numba: the modules of compute/
import it where a kernel is first called, so importing them stays cheap. The kernels' constants
are here too, since numba's cache is invalidated by a change to this file only."""

import numba
import numpy as np

# Pixels of a row a kernel copies out of the (time, y, x) stacks at once: the layers of a stack
# lie a power of two apart in memory, so reading one pixel's time series at a time would evict
# each cache line before the neighbouring pixel came to use it
SPAN = 64

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


# --- median, clear count, masking ----------------------------------------------------------


@numba.njit(nogil=True, cache=True, error_model="numpy")
def keys_at_ranks(keys, t, running_max, rank_lo, rank_hi, lower, upper):
    # per column c of sorted keys, the keys of ranks rank_lo[c] and rank_hi[c] into lower and
    # upper. With `running_max` (unsigned keys only): in a sorted column of unsigned keys the key
    # of rank r is the largest of those of rank <= r, so a running max over the keys zeroed above
    # the rank finds it with no gather; else a gather
    if running_max:
        for c in range(SPAN):
            lower[c] = keys[0, c]
            upper[c] = keys[0, c]
        for j in range(1, t):
            row = keys[j]
            rank = np.uint16(j)
            for c in range(SPAN):
                v = row[c]
                lower[c] = max(lower[c], v * lower.dtype.type(rank <= rank_lo[c]))
                upper[c] = max(upper[c], v * upper.dtype.type(rank <= rank_hi[c]))
    else:
        for c in range(SPAN):
            lower[c] = keys[rank_lo[c], c]
            upper[c] = keys[rank_hi[c], c]


@numba.njit(nogil=True, cache=True, error_model="numpy")
def median_rows(stack, sentinel, use_sentinel, unsigned, last, pairs, r0, r1, out, fill, rounded, low, high):
    # SPAN pixels at a time. Their missing values become `last` (the dtype's largest value),
    # then one sorting network sorts every pixel's series at once, each compare-exchange a
    # SIMD min/max across the pixels. A real value equal to `last` sorts among the missing
    # ones, which is harmless: the first k keys are the k clear values in order, whatever the
    # ties. The median is numpy's: the middle key, or the mean of the two middle ones, stored
    # as `out` holds it (float64 with NaN, or the output dtype, rounded and clipped as
    # to_output would, with `fill`). Rows are taken as slices, so that LLVM sees unit strides
    # and non-negative indices, and every test is bitwise: the loops vectorise.
    t, _, nx = stack.shape
    keys = np.empty((t, SPAN), dtype=stack.dtype)
    count = np.empty(SPAN, dtype=np.uint16)  # observations per period: at most 65,535
    lower = np.empty(SPAN, dtype=stack.dtype)
    upper = np.empty(SPAN, dtype=stack.dtype)
    rank_lo = np.empty(SPAN, dtype=np.uint16)
    rank_hi = np.empty(SPAN, dtype=np.uint16)
    for y in range(r0, r1):
        for x0 in range(0, nx, SPAN):
            width = min(SPAN, nx - x0)
            count[:] = 0
            for j in range(t):
                values = stack[j, y, x0:x0 + width]
                row = keys[j]
                for c in range(width):
                    v = values[c]
                    clear = ((not use_sentinel) | (v != sentinel)) & (v == v)
                    row[c] = v if clear else last
                    count[c] += clear
                for c in range(width, SPAN):
                    row[c] = last
            for p in range(pairs.shape[0]):
                a = keys[pairs[p, 0]]
                b = keys[pairs[p, 1]]
                for c in range(SPAN):
                    lo = a[c]
                    hi = b[c]
                    a[c] = min(lo, hi)
                    b[c] = max(lo, hi)
            # the keys of ranks (k - 1) // 2 and k // 2 (one and the same for an odd k)
            for c in range(SPAN):
                k = count[c]
                rank_lo[c] = (k - (k > 0)) >> 1
                rank_hi[c] = k >> 1
            keys_at_ranks(keys, t, unsigned, rank_lo, rank_hi, lower, upper)
            target = out[y, x0:x0 + width]
            for c in range(width):
                m = (np.float64(lower[c]) + np.float64(upper[c])) / 2.0
                if rounded:  # an integer output: to_output's rounding and clipping, done here
                    m = min(max(np.rint(m), low), high)
                # NaN only from +inf and -inf together: no value, as to_output has it
                target[c] = m if (count[c] > 0) & (m == m) else fill


@numba.njit(nogil=True, cache=True, error_model="numpy")
def count_rows(bands, sentinels, use_sentinel, r0, r1, out):
    # per row: for each observation, "clear in every band" built band by band over the whole
    # row (bitwise, so each pass is a straight SIMD loop), then added to the row's counts
    t, _, nx = bands[0].shape
    clear = np.empty(nx, dtype=np.bool_)
    for y in range(r0, r1):
        for x in range(nx):
            out[y, x] = 0
        for j in range(t):
            for x in range(nx):
                clear[x] = True
            for b in range(len(bands)):
                row = bands[b][j, y]
                s = row.dtype.type(sentinels[b])
                ignore = not use_sentinel[b]
                for x in range(nx):
                    v = row[x]
                    clear[x] &= (ignore | (v != s)) & (v == v)
            for x in range(nx):
                out[y, x] += clear[x]


@numba.njit(nogil=True, cache=True, error_model="numpy")
def mask_into(layers, values, in_place, first, coarse, k, r_off, c_off, lut, sentinels, use_sentinel, nodatas,
              use_nodata, clear):
    # Per row: the clear rule looked up once for every pixel (a coarse mask pixel covers k x k),
    # then per band, as the first observation of the layer, the value where clear and not the
    # file's nodata, else the sentinel; or, as a later scene of the same day, the value where
    # the layer still has the sentinel (a mosaic: the earlier scene stands where it is clear).
    ny, nx = layers[0].shape
    last = -1
    for y in range(ny):
        r = (y + r_off) // k
        if r != last:  # a new row of mask pixels: look each up once, spread it over its k columns
            last = r
            x = 0
            for ci in range(coarse.shape[1]):
                ok = lut[coarse[r, ci]]
                for _ in range(min(k - c_off if ci == 0 else k, nx - x)):
                    clear[x] = ok
                    x += 1
        for b in range(len(layers)):
            layer = layers[b]
            vals = values[b]
            s = sentinels[b]
            nd = nodatas[b]
            test_nd = use_nodata[b]
            test_s = use_sentinel[b]
            if first and in_place[b]:  # the scene was read into its layer: one array, so no
                for x in range(nx):    # aliasing check stops LLVM vectorising the branch-free loop
                    v = layer[y, x]
                    ok = clear[x] & ((not test_nd) | (v != nd)) & (v == v)
                    layer[y, x] = v if ok else s
            elif first:
                for x in range(nx):
                    v = vals[y, x]
                    ok = clear[x] & ((not test_nd) | (v != nd)) & (v == v)
                    layer[y, x] = v if ok else s
            else:
                for x in range(nx):
                    v = vals[y, x]
                    cur = layer[y, x]
                    hole = (test_s & (cur == s)) | (cur != cur)
                    if hole & clear[x] & ((not test_nd) | (v != nd)) & (v == v):
                        layer[y, x] = v


# --- mean, min, max, std ---------------------------------------------------------------------
# Row by row: each layer's row is one straight SIMD loop into per-pixel accumulators. The sums run
# over the layers in time order, as numpy's reduction over the first axis of a (time, y, x) array
# adds them, so the results are numpy's to the bit (no `reassoc`, which would reorder them).


@numba.njit(nogil=True, cache=True, error_model="numpy")
def store(target, x, m, n, fill, rounded, low, high):
    # to_output's rule for one value: no value where nothing is clear or the result is NaN,
    # otherwise rounded half to even and clipped for an integer output
    ok = (n > 0) & (m == m)
    if rounded:
        m = min(max(np.rint(m), low), high)
    target[x] = m if ok else fill


@numba.njit(nogil=True, cache=True, error_model="numpy")
def add_clear(stack, j, y, sentinel, use_sentinel, total, count):
    values = stack[j, y]
    for x in range(values.shape[0]):
        v = values[x]
        clear = ((not use_sentinel) | (v != sentinel)) & (v == v)
        total[x] += np.float64(v) if clear else 0.0
        count[x] += 1.0 if clear else 0.0


@numba.njit(nogil=True, cache=True, error_model="numpy")
def mean_rows(stack, sentinel, use_sentinel, r0, r1, out, fill, rounded, low, high):
    # numpy.nanmean: the clear values' float64 sum over their count
    t, _, nx = stack.shape
    total = np.empty(nx)
    count = np.empty(nx)
    for y in range(r0, r1):
        total[:] = 0.0
        count[:] = 0.0
        for j in range(t):
            add_clear(stack, j, y, sentinel, use_sentinel, total, count)
        target = out[y]
        for x in range(nx):
            store(target, x, total[x] / count[x], count[x], fill, rounded, low, high)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def std_rows(stack, sentinel, use_sentinel, r0, r1, out, fill, rounded, low, high):
    # numpy.nanstd (ddof 0), as numpy.nanvar computes it: the mean first, then the squared
    # deviations of the clear values added in time order, over the count, and the root
    t, _, nx = stack.shape
    mean = np.empty(nx)
    count = np.empty(nx)
    squares = np.empty(nx)
    for y in range(r0, r1):
        mean[:] = 0.0
        count[:] = 0.0
        squares[:] = 0.0
        for j in range(t):
            add_clear(stack, j, y, sentinel, use_sentinel, mean, count)
        for x in range(nx):
            mean[x] = mean[x] / count[x]
        for j in range(t):  # the row's layers are still in cache
            values = stack[j, y]
            for x in range(nx):
                v = values[x]
                clear = ((not use_sentinel) | (v != sentinel)) & (v == v)
                d = np.float64(v) - mean[x]
                squares[x] += d * d if clear else 0.0
        target = out[y]
        for x in range(nx):
            store(target, x, np.sqrt(squares[x] / count[x]), count[x], fill, rounded, low, high)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def extreme_rows(stack, sentinel, use_sentinel, largest, start, r0, r1, out, fill, rounded, low, high):
    # numpy.nanmin (or nanmax with `largest`) in the stack's own dtype: an unclear value counts as
    # `start` (the dtype's largest value for the minimum, its smallest for the maximum, or an
    # infinity), which a clear value can only equal, never pass
    t, _, nx = stack.shape
    best = np.empty(nx, dtype=stack.dtype)
    count = np.empty(nx)
    for y in range(r0, r1):
        best[:] = start
        count[:] = 0.0
        for j in range(t):
            values = stack[j, y]
            if largest:
                for x in range(nx):
                    v = values[x]
                    clear = ((not use_sentinel) | (v != sentinel)) & (v == v)
                    best[x] = max(best[x], v if clear else start)
                    count[x] += 1.0 if clear else 0.0
            else:
                for x in range(nx):
                    v = values[x]
                    clear = ((not use_sentinel) | (v != sentinel)) & (v == v)
                    best[x] = min(best[x], v if clear else start)
                    count[x] += 1.0 if clear else 0.0
        target = out[y]
        for x in range(nx):
            store(target, x, np.float64(best[x]), count[x], fill, rounded, low, high)


# --- percentiles -----------------------------------------------------------------------------


@numba.njit(nogil=True, cache=True, error_model="numpy")
def sort_span(stack, y, x0, sentinel, use_sentinel, last, pairs, keys, count):
    # as median_rows: SPAN pixels of row y from x0, their missing values made `last`, sorted at
    # once by the sorting network; afterwards the first count[c] keys of column c are its clear
    # values in order
    t, _, nx = stack.shape
    width = min(SPAN, nx - x0)
    count[:] = 0
    for j in range(t):
        values = stack[j, y, x0:x0 + width]
        row = keys[j]
        for c in range(width):
            v = values[c]
            clear = ((not use_sentinel) | (v != sentinel)) & (v == v)
            row[c] = v if clear else last
            count[c] += clear
        for c in range(width, SPAN):
            row[c] = last
    for p in range(pairs.shape[0]):
        a = keys[pairs[p, 0]]
        b = keys[pairs[p, 1]]
        for c in range(SPAN):
            lo = a[c]
            hi = b[c]
            a[c] = min(lo, hi)
            b[c] = max(lo, hi)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def percentile_indexes(fractions, t, nearest):
    # For every percentile (q / 100 in `fractions`) and count k of sorted clear values (0..t), where
    # numpy's quantile reads and how it weighs them, with numpy's own arithmetic: the virtual index
    # (k - 1) q; for "nearest" that index rounded half to even; for "linear" its floor and the next,
    # and gamma its fraction. At or past the last index numpy takes the last value twice, with gamma
    # the index + 1 (its previous index is -1). Depending on k alone, this is made once per call.
    nq = fractions.shape[0]
    lower = np.zeros((nq, t + 1), dtype=np.int64)
    upper = np.zeros((nq, t + 1), dtype=np.int64)
    gamma = np.zeros((nq, t + 1))
    for i in range(nq):
        for k in range(1, t + 1):
            index = np.float64(k - 1) * fractions[i]
            if nearest:
                lower[i, k] = np.int64(np.rint(index))
                upper[i, k] = lower[i, k]
            elif index >= k - 1:
                lower[i, k] = k - 1
                upper[i, k] = k - 1
                gamma[i, k] = index + 1.0
            else:
                below = np.floor(index)
                lower[i, k] = np.int64(below)
                upper[i, k] = lower[i, k] + 1
                gamma[i, k] = index - below
    return lower, upper, gamma


@numba.njit(nogil=True, cache=True, error_model="numpy")
def percentile_rows(stack, sentinel, use_sentinel, unsigned, last, pairs, fractions, nearest, r0, r1, out, fill,
                    rounded, low, high):
    # every percentile of `fractions` from one sort of each pixel's series, into out[i] (float64
    # with NaN, or the output dtype as to_output converts): "nearest" takes the value, "linear"
    # interpolates as numpy's _lerp, by its two-sided formula, which gives NaN next to an infinity
    # at gamma 0 and from an infinite last value taken twice, as numpy does. As in median_rows,
    # each step is a straight loop over the SPAN pixels (the ranks and weights looked up per
    # pixel first, then the keys), which vectorises better than one loop doing it all
    t, _, nx = stack.shape
    keys = np.empty((max(t, 1), SPAN), dtype=stack.dtype)
    count = np.empty(SPAN, dtype=np.uint16)  # observations per period: at most 65,535
    lower, upper, gamma = percentile_indexes(fractions, t, nearest)
    rank_lo = np.empty(SPAN, dtype=np.uint16)
    rank_hi = np.empty(SPAN, dtype=np.uint16)
    weight = np.empty(SPAN)
    below = np.empty(SPAN, dtype=stack.dtype)
    above = np.empty(SPAN, dtype=stack.dtype)
    for y in range(r0, r1):
        for x0 in range(0, nx, SPAN):
            width = min(SPAN, nx - x0)
            sort_span(stack, y, x0, sentinel, use_sentinel, last, pairs, keys, count)
            for i in range(fractions.shape[0]):
                for c in range(SPAN):
                    k = count[c]
                    rank_lo[c] = lower[i, k]
                    rank_hi[c] = upper[i, k]
                    weight[c] = gamma[i, k]
                # the running max beats the gather for a few observations, not for many
                keys_at_ranks(keys, t, unsigned and t <= 8, rank_lo, rank_hi, below, above)
                target = out[i, y, x0:x0 + width]
                if nearest:
                    for c in range(width):
                        store(target, c, np.float64(below[c]), count[c], fill, rounded, low, high)
                else:
                    for c in range(width):
                        a = np.float64(below[c])
                        b = np.float64(above[c])
                        g = weight[c]
                        diff = b - a
                        m = b - diff * (1.0 - g) if g >= 0.5 else a + diff * g
                        store(target, c, m, count[c], fill, rounded, low, high)


# --- one observation per pixel: first, last, best, medoid --------------------------------------
# These choose a layer per pixel (-1 where no observation is clear in every band); take_rows
# then copies each band's value at that layer into the band's output.


@numba.njit(nogil=True, cache=True, error_model="numpy")
def clear_row(bands, sentinels, use_sentinel, j, y, clear):
    # for layer j of row y: which pixels are clear in every band (bitwise, straight SIMD loops)
    clear[:] = True
    for b in range(len(bands)):
        row = bands[b][j, y]
        s = row.dtype.type(sentinels[b])
        ignore = not use_sentinel[b]
        for x in range(row.shape[0]):
            v = row[x]
            clear[x] &= (ignore | (v != s)) & (v == v)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def first_rows(bands, sentinels, use_sentinel, latest, r0, r1, layer):
    # the earliest layer clear in every band (the latest with `latest`); a row is done once every
    # pixel has one
    t, _, nx = bands[0].shape
    clear = np.empty(nx, dtype=np.bool_)
    for y in range(r0, r1):
        chosen = layer[y]
        chosen[:] = -1
        for step in range(t):
            j = t - 1 - step if latest else step
            clear_row(bands, sentinels, use_sentinel, j, y, clear)
            todo = 0
            for x in range(nx):
                take = (chosen[x] < 0) & clear[x]
                chosen[x] = j if take else chosen[x]
                todo += chosen[x] < 0
            if todo == 0:
                break


@numba.njit(nogil=True, cache=True, error_model="numpy")
def best_rows(bands, sentinels, use_sentinel, rank, maximize, r0, r1, layer):
    # the layer clear in every band with the largest rank (smallest unless `maximize`), NaN ranks
    # not taken; a later layer must beat the best so far, so ties go to the earliest
    t, _, nx = bands[0].shape
    clear = np.empty(nx, dtype=np.bool_)
    best = np.empty(nx, dtype=rank.dtype)
    for y in range(r0, r1):
        chosen = layer[y]
        chosen[:] = -1
        best[:] = 0
        for j in range(t):
            clear_row(bands, sentinels, use_sentinel, j, y, clear)
            ranks = rank[j, y]
            if maximize:
                for x in range(nx):
                    r = ranks[x]
                    take = clear[x] & (r == r) & ((chosen[x] < 0) | (r > best[x]))
                    best[x] = r if take else best[x]
                    chosen[x] = j if take else chosen[x]
            else:
                for x in range(nx):
                    r = ranks[x]
                    take = clear[x] & (r == r) & ((chosen[x] < 0) | (r < best[x]))
                    best[x] = r if take else best[x]
                    chosen[x] = j if take else chosen[x]


@numba.njit(nogil=True, cache=True, error_model="numpy")
def medoid_rows(bands, sentinels, use_sentinel, is_float, r0, r1, layer):
    # the observation clear in every band with the least sum of Euclidean distances (in band
    # space) to the others, as hdmedians' medoid, the first such on a tie. Each sum adds the
    # distances in time order, so equal points have equal sums and the earliest of them wins.
    nb = len(bands)
    t, _, nx = bands[0].shape
    n = max(t, 1)
    chunk = np.empty((nb, SPAN, n))
    pts = np.empty((nb, n))
    index = np.empty(n, dtype=np.int64)
    total = np.empty(n)
    d2 = np.empty(n)
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
                        index[k] = j
                        k += 1
                if k == 0:
                    layer[y, x] = -1
                    continue
                total[:k] = 0.0
                for i in range(k - 1):
                    # distances from point i to the later ones, a SIMD loop over them
                    d2[i + 1:k] = 0.0
                    for b in range(nb):
                        e = pts[b, i]
                        for m in range(i + 1, k):
                            d = pts[b, m] - e
                            d2[m] += d * d
                    s = total[i]
                    for m in range(i + 1, k):
                        d = np.sqrt(d2[m])
                        total[m] += d
                        s += d
                    total[i] = s
                best = 0
                for i in range(1, k):
                    if total[i] < total[best]:
                        best = i
                layer[y, x] = index[best]


@numba.njit(nogil=True, cache=True, error_model="numpy")
def take_rows(stack, layer, r0, r1, out, fill, rounded, low, high):
    # each pixel's value at its chosen layer, stored as `out` holds it (fill where none is chosen)
    for y in range(r0, r1):
        chosen = layer[y]
        target = out[y]
        for x in range(chosen.shape[0]):
            j = chosen[x]
            v = np.float64(stack[max(j, 0), y, x])
            if rounded:
                v = min(max(np.rint(v), low), high)
            target[x] = v if j >= 0 else fill


# Opcodes of a band index compiled for index_rows (compute/indices.py compiles the expression):
# each instruction is (opcode, its register, operand registers or the band or constant it takes)
OP_BAND, OP_NUM, OP_NEG, OP_ADD, OP_SUB, OP_MUL, OP_DIV, OP_SQRT, OP_ABS, OP_MIN, OP_MAX, OP_CLIP = range(12)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _least(p, q):
    # numpy.minimum in float32: NaN if either is
    return p if (p != p or p < q) else q


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _greatest(p, q):
    return p if (p != p or p > q) else q


@numba.njit(nogil=True, cache=True, error_model="numpy")
def index_rows(bands, sentinels, use_sentinel, is_float, scales, offsets, code, consts, r0, r1, regs, out):
    # an index per observation, a row at a time: every instruction over the row in float32 (the
    # registers stay in cache), the band loads as physical values (stored x scale + offset, in
    # float32 as numpy computes them) with NaN where the observation is not clear
    nan = np.float32(np.nan)
    nx = out.shape[2]
    result = code[code.shape[0] - 1, 1]
    for t in range(out.shape[0]):
        for y in range(r0, r1):
            for i in range(code.shape[0]):
                op, d, a, b, c = code[i, 0], code[i, 1], code[i, 2], code[i, 3], code[i, 4]
                if op == OP_BAND:
                    band = bands[a]
                    s, use, sc, of = sentinels[a], use_sentinel[a], scales[a], offsets[a]
                    for x in range(nx):
                        v = band[t, y, x]
                        if (use and v == s) or (is_float and v != v):
                            regs[d, x] = nan
                        else:
                            regs[d, x] = np.float32(v) * sc + of
                elif op == OP_NUM:
                    k = consts[a]
                    for x in range(nx):
                        regs[d, x] = k
                elif op == OP_NEG:
                    for x in range(nx):
                        regs[d, x] = -regs[a, x]
                elif op == OP_ADD:
                    for x in range(nx):
                        regs[d, x] = regs[a, x] + regs[b, x]
                elif op == OP_SUB:
                    for x in range(nx):
                        regs[d, x] = regs[a, x] - regs[b, x]
                elif op == OP_MUL:
                    for x in range(nx):
                        regs[d, x] = regs[a, x] * regs[b, x]
                elif op == OP_DIV:
                    for x in range(nx):
                        q = regs[b, x]
                        regs[d, x] = nan if q == 0 else regs[a, x] / q
                elif op == OP_SQRT:
                    for x in range(nx):
                        regs[d, x] = np.sqrt(regs[a, x])
                elif op == OP_ABS:
                    for x in range(nx):
                        regs[d, x] = np.abs(regs[a, x])
                elif op == OP_MIN:
                    for x in range(nx):
                        regs[d, x] = _least(regs[a, x], regs[b, x])
                elif op == OP_MAX:
                    for x in range(nx):
                        regs[d, x] = _greatest(regs[a, x], regs[b, x])
                else:  # OP_CLIP: numpy.clip, as maximum then minimum
                    for x in range(nx):
                        regs[d, x] = _least(_greatest(regs[a, x], regs[b, x]), regs[c, x])
            for x in range(nx):
                out[t, y, x] = regs[result, x]


@numba.njit(nogil=True, cache=True, error_model="numpy")
def summarise_narrow(values, sentinel, use_sentinel):
    # (count, minimum, maximum, sum, sum of squares) of the values of an integer array of at most
    # 16 bits that are not the sentinel, exactly, in int64 (squares of 16 bits summed over 2^30
    # values fit); one pass of selects that LLVM vectorises
    n = 0
    total = np.int64(0)
    squares = np.int64(0)
    low = np.int64(2**62)
    high = -np.int64(2**62)
    for v in values:
        w = np.int64(v)
        keep = not (use_sentinel and v == sentinel)
        n += 1 if keep else 0
        total += w if keep else 0
        squares += w * w if keep else 0
        low = min(low, w) if keep else low
        high = max(high, w) if keep else high
    return n, low, high, total, squares


@numba.njit(nogil=True, cache=True, error_model="numpy")
def summarise(values, sentinel, use_sentinel, is_float):
    # (count, minimum, maximum, mean, standard deviation) of the values that are neither the
    # sentinel nor, in a float array, NaN or infinite: two passes of selects (the deviations from
    # the mean in the second), which LLVM vectorises
    n = 0
    total = 0.0
    low = np.inf
    high = -np.inf
    for v in values:
        f = np.float64(v)
        keep = not (use_sentinel and v == sentinel) and (not is_float or abs(f) < np.inf)
        n += 1 if keep else 0
        total += f if keep else 0.0
        low = min(low, f) if keep else low
        high = max(high, f) if keep else high
    if n == 0:
        return 0, 0.0, 0.0, 0.0, 0.0
    mean = total / n
    squares = 0.0
    for v in values:
        f = np.float64(v)
        keep = not (use_sentinel and v == sentinel) and (not is_float or abs(f) < np.inf)
        d = f - mean
        squares += d * d if keep else 0.0
    return n, low, high, mean, np.sqrt(squares / n)
