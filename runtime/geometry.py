"""OpenCV's geometry and filters, re-implemented as tensor (and numpy) ops with OpenCV's
conventions (pixel centres at integer coordinates, BORDER_REFLECT_101): the face alignment,
warps, blurs and erosions of the portrait masks, face analysis and super-resolution (docs/model.md
§1.2, §2.7, §2.8). One module, so each re-implementation exists once and is tested once.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def similarity_transform(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares rotation + uniform scale + translation taking points ``src`` (N, K, 2) to
    ``dst`` (K, 2): (N, 2, 3) matrices [[a, -b, tx], [b, a, ty]] (what
    ``cv2.estimateAffinePartial2D`` fits)."""
    n, k, _ = src.shape
    x, y = src[..., 0].double(), src[..., 1].double()
    one, zero = torch.ones_like(x), torch.zeros_like(x)
    rows_x = torch.stack([x, -y, one, zero], dim=-1)  # u = a x - b y + tx
    rows_y = torch.stack([y, x, zero, one], dim=-1)  # v = b x + a y + ty
    a = torch.cat([rows_x, rows_y], dim=1)  # (N, 2K, 4)
    b = torch.cat([dst[:, 0], dst[:, 1]]).double().expand(n, 2 * k)[..., None]
    p = torch.linalg.solve(a.transpose(1, 2) @ a, a.transpose(1, 2) @ b)[..., 0]  # (N, 4)
    a_, b_, tx, ty = p.unbind(-1)
    m = torch.stack([torch.stack([a_, -b_, tx], -1), torch.stack([b_, a_, ty], -1)], dim=1)
    return m.to(src.dtype)


def invert_affine(m: torch.Tensor) -> torch.Tensor:
    """(N, 2, 3) -> the inverse maps (``cv2.invertAffineTransform``)."""
    lin = torch.linalg.inv(m[..., :2].double())
    return torch.cat([lin, -(lin @ m[..., 2:].double())], dim=-1).to(m.dtype)


def warp_affine(
    image: torch.Tensor, m: torch.Tensor, size: tuple[int, int], border: float | tuple = 0.0
) -> torch.Tensor:
    """``cv2.warpAffine(image, m, (w, h))`` for a batch: (N, C, H, W) -> (N, C, h, w) with
    out(p) = image(m^-1 p), bilinear, constant ``border`` (a value or one per channel)."""
    n, c, hi, wi = image.shape
    h, w = size
    inv = invert_affine(m).to(image.dtype)
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=image.dtype, device=image.device),
        torch.arange(w, dtype=image.dtype, device=image.device),
        indexing="ij",
    )
    pts = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).reshape(1, -1, 3)  # (1, hw, 3)
    src = pts @ inv.transpose(1, 2)  # (N, hw, 2) source pixel coordinates
    grid = torch.stack([(2 * src[..., 0] + 1) / wi - 1, (2 * src[..., 1] + 1) / hi - 1], dim=-1)
    fill = torch.as_tensor(border, dtype=image.dtype, device=image.device).reshape(1, -1, 1, 1)
    out = F.grid_sample(
        image - fill, grid.reshape(n, h, w, 2), "bilinear", "zeros", align_corners=False
    )
    return out + fill  # zeros padding of (image - border), shifted back: a constant border


def erode(mask: torch.Tensor, k: int) -> torch.Tensor:
    """``cv2.erode`` with a k x k box (anchor at k // 2; the image border does not erode).
    A box minimum is separable: a 1 x k pass then a k x 1 pass, O(k) per pixel, not O(k^2)
    (the feathering erosion reaches k ~ 160 at 2048^2)."""
    if k <= 1:
        return mask
    a = k // 2
    x = F.pad(mask, (a, k - 1 - a, 0, 0), value=float("inf"))
    x = -F.max_pool2d(-x, (1, k), stride=1)
    x = F.pad(x, (0, 0, a, k - 1 - a), value=float("inf"))
    return -F.max_pool2d(-x, (k, 1), stride=1)


def gaussian_blur(x: torch.Tensor, k: int, sigma: float = 0.0) -> torch.Tensor:
    """``cv2.GaussianBlur(x, (k, k), sigma)``: separable, BORDER_REFLECT_101; sigma <= 0 takes
    OpenCV's default from k."""
    if k <= 1:
        return x
    if sigma <= 0:
        sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
    r = torch.arange(k, dtype=torch.float64, device=x.device) - (k - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    g = (g / g.sum()).to(x.dtype)
    c = x.shape[1]
    pad = k // 2
    x = F.pad(x, (pad, pad, 0, 0), mode="reflect")
    x = F.conv2d(x, g.reshape(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    x = F.pad(x, (0, 0, pad, pad), mode="reflect")
    return F.conv2d(x, g.reshape(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize (antialiased when shrinking); a no-op at the same size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2]
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=shrink)


def odd_kernel(x: float) -> int:
    """The odd kernel size nearest ``x`` (at least 1)."""
    k = max(1, int(round(x)))
    return k if k % 2 else k + 1


def gaussian_blur_2d(x: torch.Tensor, ksize: int) -> torch.Tensor:
    """``cv2.GaussianBlur(x, (k, k), 0)`` of one (H, W) map (``gaussian_blur`` on a batch)."""
    return gaussian_blur(x[None, None], ksize)[0, 0]


# --- numpy images (face analysis, before any tensor exists) --------------------------------------


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama, as skimage's SimilarityTransform) src -> dst: (2, 3)."""
    n = src.shape[0]
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    cov = d.T @ s / n
    u, sig, vt = np.linalg.svd(cov)
    e = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        e[1, 1] = -1
    r = u @ e @ vt
    scale = (sig * np.diag(e)).sum() / s.var(0).sum()
    t = mu_d - scale * r @ mu_s
    return np.concatenate([scale * r, t[:, None]], axis=1).astype(np.float32)


def warp_affine_image(img: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """cv2.warpAffine(img, m, (size, size)) with bilinear sampling and a zero border."""
    h, w = img.shape[:2]
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    ys, xs = np.mgrid[:size, :size].astype(np.float32)
    src = np.stack([xs, ys, np.ones_like(xs)], -1) @ inv.T  # (size, size, 2) source x, y
    grid = torch.from_numpy(
        np.stack([src[..., 0] / (w - 1) * 2 - 1, src[..., 1] / (h - 1) * 2 - 1], -1)
    ).float()[None]
    x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)).permute(2, 0, 1)[None]
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[0].permute(1, 2, 0).numpy()
