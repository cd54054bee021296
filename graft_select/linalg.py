"""Low-rank features and Fast MaxVol: the two kernels of GRAFT.

Both are pure functions written against the array API: the result is in the
input's namespace and on its device, and a stack of matrices (leading
dimensions) is processed in one batched call. This module checks the
arguments; the bodies are ``_svd`` and ``_maxvol``.
"""

from ._backend import (
    from_numpy,
    get_namespace,
    is_meta,
    is_sparse,
    on_input_device,
    torch_cpu_view,
)
from ._maxvol import fast_maxvol_unchecked
from ._ops import rescale_extreme
from ._svd import low_rank_features_unchecked
from ._validation import (
    check_array,
    check_bool,
    check_int,
    check_option,
    check_random_state,
    check_real,
    half_dtype,
)

__all__ = ["fast_maxvol", "low_rank_features"]

_SVD_METHODS = ("auto", "exact", "randomized")
_MAXVOL_METHODS = ("volume", "lu")


# ------------------------------------------------------------- low_rank_features


@on_input_device
def low_rank_features(
    X, n_components, *, method="auto", n_oversamples=10, n_iter=2, random_state=None
):
    """First ``n_components`` left singular vectors of ``X`` (or of each matrix in a stack).

    Parameters
    ----------
    X : array of shape (n_samples, n_features) or (..., n_samples, n_features)
        Data in NumPy, torch, CuPy or another array-API namespace except dask
        (compute a dask array first, or fit :class:`~graft_select.GraftSelector`
        on it), or a 2-D scipy.sparse CSR/CSC matrix, which is never densified.
        Integer and bool arrays are converted to float64; float32 stays
        float32. Half precision (float16, bfloat16) is computed in float32 and
        the result is returned in the input's dtype. Inputs of any finite
        magnitude are accepted: X is scaled by a power of two when its entries
        are extremely large or small.
    n_components : int
        Rank ``r`` of the factor, ``1 <= r <= min(n_samples, n_features)``.
    method : {"auto", "exact", "randomized"}, default="auto"
        ``"exact"``: thin SVD (``scipy.sparse.linalg.svds`` for sparse input).
        ``"randomized"``: randomized range finder with power iterations (Halko,
        Martinsson and Tropp, 2011). ``"auto"`` uses ``"randomized"`` when
        ``n_components + n_oversamples`` is at most half of
        ``min(n_samples, n_features)`` or the input is sparse, else ``"exact"``.
    n_oversamples : int, default=10
        Extra random directions used by the range finder.
    n_iter : int, default=2
        Power iterations of the range finder. After every product the columns
        are scaled to unit norm (cheap, and it keeps float32 from overflowing);
        with more than two iterations each is also re-orthonormalised by QR.
    random_state : None, int, numpy.random.Generator or RandomState, default=None
        Seeds the Gaussian test matrix. It is drawn on the host with NumPy and
        then moved to ``X``'s device, so every backend uses the same matrix.

    Returns
    -------
    U : array of shape (..., n_samples, n_components)
        Orthonormal columns spanning (approximately, for ``"randomized"``) the
        dominant left singular subspace, in ``X``'s namespace, device and dtype
        (NumPy for sparse input).

    See Also
    --------
    fast_maxvol : Rows of maximal volume of ``U``.
    sklearn.utils.extmath.randomized_svd : The same range finder for one NumPy matrix.

    Notes
    -----
    The range finder costs ``O(n_samples * n_features * (r + p) * (2 * n_iter + 2))``
    for ``p`` oversamples, against ``O(n_samples * n_features * min(n_samples,
    n_features))`` for the exact SVD. One Gaussian test matrix is shared by every
    matrix of a stack.

    References
    ----------
    N. Halko, P. G. Martinsson, J. A. Tropp, "Finding structure with randomness",
    SIAM Review 53(2), 2011.

    Examples
    --------
    >>> import numpy as np
    >>> from graft_select import low_rank_features
    >>> X = np.random.default_rng(0).standard_normal((100, 20))
    >>> U = low_rank_features(X, 5, random_state=0)
    >>> U.shape
    (100, 5)
    >>> bool(np.allclose(U.T @ U, np.eye(5)))
    True
    """
    owner = "low_rank_features"
    half = None if is_sparse(X) else half_dtype(X)
    X, xp = check_array(X, "X", owner, allow_sparse=True, allow_dask=False)
    n_samples, n_features = X.shape[-2:]
    r = check_int(n_components, "n_components", owner, low=1, high=min(n_samples, n_features))
    method = check_option(method, "method", owner, _SVD_METHODS)
    p = check_int(n_oversamples, "n_oversamples", owner, low=0)
    n_iter = check_int(n_iter, "n_iter", owner, low=0)
    rng = check_random_state(random_state, "random_state", owner)
    sparse = is_sparse(X)
    if sparse:
        # the dense factors of sparse X are NumPy arrays: use NumPy's array-API namespace
        # (plain numpy lacks matrix_transpose and qr(...).Q before NumPy 2.0)
        xp, _ = get_namespace(X)
    X, _ = rescale_extreme(X, xp)
    U = low_rank_features_unchecked(X, r, xp, method=method, n_oversamples=p, n_iter=n_iter,
                                    rng=rng)
    return U if half is None else xp.astype(U, half)


# ----------------------------------------------------------------- fast_maxvol


@on_input_device
def fast_maxvol(A, k=None, *, method="volume", refine=False, tol=1.05, max_iter=None):
    """Indices of ``k`` rows of ``A`` whose submatrix has (locally) maximal volume.

    Parameters
    ----------
    A : array of shape (n, r) or (..., n, r), with n >= r
        A tall matrix (typically the orthonormal factor from
        :func:`low_rank_features`) or a stack of them. Integer and bool arrays are
        converted to float64; half precision (float16, bfloat16) is computed in
        float32. ``A`` is never modified. Not a dask array (a TypeError):
        compute it first.
    k : int, default=None
        Number of rows to return, ``1 <= k <= n``; ``None`` means ``k = r``.
    method : {"volume", "lu"}, default="volume"
        Greedy pivot rule for the first ``min(k, r)`` rows. ``"volume"`` takes
        the row with the largest residual norm (the pivots of QR with column
        pivoting of ``A.T``): every step maximises the volume gain exactly.
        ``"lu"`` takes the largest entry of the next column (the pivots of LU
        with partial pivoting), delegated to LAPACK getrf, torch or CuPy.
    refine : bool, default=False
        Swap rows of the square ``r``-subset until every coefficient of
        ``A @ inv(A[I])`` is at most ``tol`` in absolute value (a dominant
        submatrix, Goreinov et al. 2010); each swap multiplies the volume by more
        than ``tol``. Needs ``k >= r``.
    tol : float, default=1.05
        Dominance tolerance for ``refine``, at least 1.0.
    max_iter : int, default=None
        Maximum number of swaps for ``refine``; ``None`` means ``10 * r``.

    Returns
    -------
    indices : integer array of shape (..., k)
        Unique row indices in pivot order (the first ``j`` are the greedy
        ``j``-subset, unless ``refine`` swapped some of the first ``r``), int64,
        in ``A``'s namespace and on its device.

    See Also
    --------
    low_rank_features : The orthonormal factor this is usually applied to.

    Notes
    -----
    For ``k > r`` the extra rows are added by rectangular MaxVol (Mikhalev and
    Oseledets, 2018): the row with the largest norm in ``C = A @ pinv(A[I])`` is
    added, which multiplies ``det(A[I].T @ A[I])`` by ``1 + ||C_i||^2``. After a
    full-rank greedy phase (the usual case) ``C`` comes from the coordinates the
    greedy stored and each step downdates one column of ``C @ C.T``, at
    ``O(n (r + j))`` for step ``j``; otherwise ``C`` is kept current with rank-1
    updates.

    Rank-deficient ``A``: the greedy phase stops once the largest remaining
    residual is at most ``max(n, r) * eps * max_i ||A_i||`` (or, for ``"lu"``,
    once a pivot is that small, after which the volume rule continues from the
    LU pivots found so far). The remaining rows are then added by the
    rectangular rule within the span of the rows chosen so far, so rows poorly
    represented by the current choice come first, and rows with nothing left
    (for example zero rows) come last, lowest index first. Every call returns
    ``k`` unique indices.

    Each greedy step costs ``O(n r)`` (a matrix-vector product with ``A``, and
    one with the directions found so far), so the first ``r`` pivots cost
    ``O(n r^2)``.

    References
    ----------
    S. A. Goreinov, I. V. Oseledets, D. V. Savostyanov, E. E. Tyrtyshnikov,
    N. L. Zamarashkin, "How to find a good submatrix", 2010.
    A. Mikhalev, I. V. Oseledets, "Rectangular maximum-volume submatrices and
    their applications", Linear Algebra Appl. 538, 2018.

    Examples
    --------
    >>> import numpy as np
    >>> from graft_select import fast_maxvol
    >>> A = np.array([[1.0, 0.0], [0.1, 0.1], [0.0, 2.0], [0.5, 0.5]])
    >>> fast_maxvol(A).tolist()
    [2, 0]
    >>> fast_maxvol(A, 3).tolist()
    [2, 0, 3]
    """
    owner = "fast_maxvol"
    if is_meta(A):
        check_array(A, "A", owner)  # raises the meta-tensor error
    view = torch_cpu_view(A)
    checked, _ = check_array(A if view is None else view, "A", owner, allow_dask=False,
                             ensure_finite=False)  # checked in the body, from sq_norms
    n, r = checked.shape[-2:]
    if n < r:
        raise ValueError(
            f"'A' of {owner} must be tall (at least as many rows as columns), got shape "
            f"{tuple(checked.shape)}; pass A.T or reduce its rank with low_rank_features first."
        )
    k = r if k is None else check_int(k, "k", owner, low=1, high=n)
    method = check_option(method, "method", owner, _MAXVOL_METHODS)
    refine = check_bool(refine, "refine", owner)
    tol = check_real(tol, "tol", owner, low=1.0)
    max_iter = 10 * r if max_iter is None else check_int(max_iter, "max_iter", owner, low=1)
    if refine and k < r:
        raise ValueError(
            f"refine=True in {owner} needs k >= r (the square submatrix is refined), got "
            f"k={k} and r={r}; pass A[..., :{k}] to refine a {k}-subset, or refine=False."
        )
    indices = fast_maxvol_unchecked(checked, k, method=method, refine=refine, tol=tol,
                                    max_iter=max_iter)
    return indices if view is None else from_numpy(indices, *get_namespace(A))
