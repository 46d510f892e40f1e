"""Figures of a trained model: reconstructions, prior samples, latent traversals, latent maps,
and a classifier's confusion matrix.

:func:`write_model_figures` writes every PNG that a model's base class allows; image grids
for ``(C, H, W)`` data, small line plots for ``(D,)`` vectors. :func:`image_grid` tiles a
batch of images into one array without matplotlib, cheap enough to log to TensorBoard
during training.

Figures are drawn on matplotlib's Agg canvas directly (``matplotlib.figure.Figure``, never
``pyplot``), so they work headless and leave the process-wide backend and pyplot's figure
list alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from toolkit.model import AutoencoderModel, ClassifierModel, GenerativeModel, Model
from toolkit.model_eval import encode_split, eval_mode, iterate_examples, seeded

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from toolkit.data.images import ImageDataset

#: Test examples shown in ``reconstructions.png`` and samples in ``samples.png``.
N_RECONSTRUCTIONS = 32
N_SAMPLES = 64
#: Latent dimensions (rows) and steps from -3 to +3 standard deviations in ``traversals.png``.
MAX_TRAVERSAL_DIMS = 8
TRAVERSAL_STEPS = 13  # half-sigma steps
TRAVERSAL_SIGMAS = 3.0
#: ``manifold.png`` decodes a MANIFOLD_SIZE x MANIFOLD_SIZE grid of 2-D latents.
MANIFOLD_SIZE = 15
#: Up to this many classes ``confusion_matrix.png`` writes each cell's percentage in it; beyond,
#: the numbers would not fit, and the colours alone show the matrix.
MAX_ANNOTATED_CLASSES = 30

#: Images per row of inputs (and of reconstructions) in a reconstruction grid.
RECONSTRUCTION_COLUMNS = 16
_SIGNAL_RECONSTRUCTION_TITLE = "Test inputs (black) and their reconstructions (red, dashed)"

_GAP_VALUE = 255  # white gaps: visible between dark-background digits


# --------------------------------------------------------------------------- arrays


def _to_numpy(images: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        return images.detach().float().cpu().numpy()
    return np.asarray(images, dtype=np.float32)


def image_grid(images: np.ndarray | torch.Tensor, nrow: int) -> np.ndarray:
    """Tile ``[N, C, H, W]`` images in ``[0, 1]`` into one ``[H', W', 3]`` uint8 RGB array.

    ``nrow`` is the number of images per row (as in torchvision's ``make_grid``); images are
    separated and framed by 1-pixel white gaps and unused cells are left white. Grey images
    (``C == 1``, or ``[N, H, W]``) are repeated into three channels so every grid is RGB.
    """
    x = _to_numpy(images)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"image_grid takes [N, C, H, W] images with 1 or 3 channels, got shape {x.shape}")
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    n, _, h, w = x.shape
    cols = max(1, min(nrow, n))
    rows = max(1, -(-n // cols))
    pixels = np.round(np.clip(np.nan_to_num(x), 0.0, 1.0) * 255.0).astype(np.uint8)
    grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, 3), _GAP_VALUE, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        top, left = 1 + r * (h + 1), 1 + c * (w + 1)
        grid[top : top + h, left : left + w] = pixels[i].transpose(1, 2, 0)
    return grid


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    return fig


def _render(fig: Figure) -> np.ndarray:
    """The figure as an ``[H, W, 3]`` uint8 array."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def _plot_signal_cells(
    ax: Axes,
    signals: np.ndarray,
    color: Any = "k",
    linewidth: float = 1.0,
    linestyle: str = "-",
    label: str | None = None,
) -> None:
    """Draw ``signals[r, c]`` (``[R, C, D]`` values in ``[0, 1]``) each in its own cell of
    one axes, row 0 at the top: one axes and one line collection instead of R x C subplots,
    which keeps a 15 x 15 manifold of signals fast to draw."""
    from matplotlib.collections import LineCollection

    rows, cols, d = signals.shape
    t = np.linspace(0.06, 0.94, d)
    segments = []
    for r in range(rows):
        for c in range(cols):
            y = (rows - 1 - r) + 0.06 + 0.88 * np.clip(signals[r, c], 0.0, 1.0)
            segments.append(np.column_stack([c + t, y]))
    ax.add_collection(LineCollection(segments, colors=color, linewidths=linewidth, linestyles=linestyle, label=label))
    ax.set_xlim(0, cols)
    ax.set_ylim(0, rows)
    # Faint cell borders so neighbouring signals do not read as one curve.
    for c in range(1, cols):
        ax.axvline(c, color="0.85", linewidth=0.5)
    for r in range(1, rows):
        ax.axhline(r, color="0.85", linewidth=0.5)
    ax.set_xticks([])
    ax.set_yticks([])


def _cells(x: np.ndarray, cols: int) -> np.ndarray:
    """``[N, D]`` signals as ``[R, cols, D]`` cells, padding the last row with NaN (not drawn)."""
    n, d = x.shape
    rows = -(-n // cols)
    out = np.full((rows * cols, d), np.nan, dtype=np.float32)
    out[:n] = x
    return out.reshape(rows, cols, d)


def _is_image_shape(shape: Sequence[int]) -> bool:
    return len(shape) == 3


def reconstruction_grid(model: AutoencoderModel, x: torch.Tensor) -> np.ndarray:
    """Inputs above their reconstructions, as an ``[H, W, 3]`` uint8 array.

    For images: pairs of rows, a row of up to 16 inputs over the row of their
    reconstructions (no matplotlib, cheap enough for TensorBoard). For vectors ``[B, D]``: a
    rendered figure with each input (black) and its reconstruction (red, dashed) in one cell.
    """
    with eval_mode(model):
        recon = model.reconstruct(x)
    inputs = _to_numpy(x)
    outputs = _to_numpy(recon).reshape(inputs.shape)
    n = len(inputs)
    if inputs.ndim == 4:
        cols = max(1, min(RECONSTRUCTION_COLUMNS, n))
        rows: list[np.ndarray] = []
        for start in range(0, n, cols):
            chunk_in, chunk_out = inputs[start : start + cols], outputs[start : start + cols]
            pad = cols - len(chunk_in)
            if pad:  # keep every pair of rows the same width
                blank = np.ones((pad, *inputs.shape[1:]), dtype=np.float32)
                chunk_in, chunk_out = np.concatenate([chunk_in, blank]), np.concatenate([chunk_out, blank])
            rows += [chunk_in, chunk_out]
        return image_grid(np.concatenate(rows), nrow=cols)
    flat_in, flat_out = inputs.reshape(n, -1), outputs.reshape(n, -1)
    return _render(_signal_reconstruction_figure(flat_in, flat_out))


def _signal_reconstruction_figure(inputs: np.ndarray, outputs: np.ndarray) -> Figure:
    cols = min(8, len(inputs))
    cells_in, cells_out = _cells(inputs, cols), _cells(outputs, cols)
    rows = cells_in.shape[0]
    fig = _figure(1.4 * cols + 0.5, 1.0 * rows + 1.0)
    ax = fig.add_subplot()
    _plot_signal_cells(ax, cells_in, color="k", linewidth=1.2, label="input")
    _plot_signal_cells(ax, cells_out, color="tab:red", linewidth=1.2, linestyle="--", label="reconstruction")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), ncols=2, frameon=False)
    ax.set_title(_SIGNAL_RECONSTRUCTION_TITLE)
    return fig


# --------------------------------------------------------------------------- figures


def _image_figure(
    grid: np.ndarray,
    title: str,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    cell: tuple[int, int] | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
) -> Figure:
    """A titled figure showing an :func:`image_grid` array, optionally with a label per row
    and column of cells (``cell`` is the image size ``(h, w)`` the grid was built from)."""
    height, width = grid.shape[:2]
    # The longer side of the grid gets 5 to 10 inches: small grids (8x8 digits) are blown
    # up enough to read, large ones (a manifold of 28x28 digits) still fit on a screen.
    scale = min(10.0, max(5.0, 0.03 * max(width, height))) / max(width, height)
    fig = _figure(max(4.0, width * scale + 1.6), max(2.5, height * scale + 1.0))
    ax = fig.add_subplot()
    ax.imshow(grid, interpolation="nearest")
    ax.set_title(title)
    if cell is not None and row_labels is not None:
        h = cell[0]
        ax.set_yticks([1 + r * (h + 1) + (h - 1) / 2 for r in range(len(row_labels))], list(row_labels))
    else:
        ax.set_yticks([])
    if cell is not None and col_labels is not None:
        w = cell[1]
        ax.set_xticks([1 + c * (w + 1) + (w - 1) / 2 for c in range(len(col_labels))], list(col_labels))
    else:
        ax.set_xticks([])
    ax.tick_params(length=0)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    return fig


def _reconstructions_figure(model: AutoencoderModel, x: torch.Tensor) -> Figure:
    if x.ndim != 4:
        with eval_mode(model):
            recon = model.reconstruct(x)
        n = len(x)
        return _signal_reconstruction_figure(_to_numpy(x).reshape(n, -1), _to_numpy(recon).reshape(n, -1))
    grid = reconstruction_grid(model, x)
    h, w = x.shape[2:]
    cols = min(RECONSTRUCTION_COLUMNS, len(x))
    pairs = -(-len(x) // cols)
    return _image_figure(
        grid,
        "Test inputs and their reconstructions",
        row_labels=["input", "reconstruction"] * pairs,
        cell=(h, w),
    )


def _samples_figure(model: GenerativeModel, shape: tuple[int, ...], device: torch.device | str, seed: int) -> Figure:
    with eval_mode(model), seeded(seed, device):
        samples = _to_numpy(model.sample(N_SAMPLES))
    title = f"{N_SAMPLES} samples from the prior, decoded (likelihood mean)"
    if _is_image_shape(shape):
        cols = int(np.ceil(np.sqrt(N_SAMPLES)))
        return _image_figure(image_grid(samples.reshape(-1, *shape), nrow=cols), title)
    flat = samples.reshape(len(samples), -1)
    cells = _cells(flat, 8)
    fig = _figure(1.4 * 8 + 0.5, 1.0 * cells.shape[0] + 0.8)
    ax = fig.add_subplot()
    _plot_signal_cells(ax, cells, color="tab:blue")
    ax.set_title(title)
    return fig


def _decode(model: AutoencoderModel, z: np.ndarray, device: torch.device | str) -> np.ndarray:
    with eval_mode(model):
        return _to_numpy(model.decode(torch.as_tensor(z, dtype=torch.float32, device=device)))


def _sigma_label(s: float) -> str:
    return "0" if s == 0 else f"{s:+.0f}σ"


def _traversal_figure(
    model: AutoencoderModel, latents: np.ndarray, shape: tuple[int, ...], device: torch.device | str
) -> Figure:
    """Rows: latent dims 0..7; columns: that dim at mean + s*std for s in -3..+3, the other
    dims held at the mean test latent, so each row shows what one dim controls."""
    mean, std = latents.mean(axis=0), latents.std(axis=0)
    dims = min(MAX_TRAVERSAL_DIMS, latents.shape[1])
    offsets = np.linspace(-TRAVERSAL_SIGMAS, TRAVERSAL_SIGMAS, TRAVERSAL_STEPS)
    z = np.repeat(mean[None], dims * TRAVERSAL_STEPS, axis=0).reshape(dims, TRAVERSAL_STEPS, -1)
    for d in range(dims):
        z[d, :, d] = mean[d] + offsets * std[d]
    decoded = _decode(model, z.reshape(dims * TRAVERSAL_STEPS, -1), device)
    # Label whole sigmas only; half-sigma labels would crowd the axis.
    col_labels = [_sigma_label(s) if float(s).is_integer() else "" for s in offsets]
    row_labels = [f"z[{d}]" for d in range(dims)]
    which = f"first {dims} of {latents.shape[1]} dims" if dims < latents.shape[1] else f"all {dims} dims"
    title = f"Latent traversals ({which})\neach row sweeps one dim over ±3σ of its test spread, others at the mean"
    if _is_image_shape(shape):
        grid = image_grid(decoded.reshape(-1, *shape), nrow=TRAVERSAL_STEPS)
        return _image_figure(
            grid, title, row_labels=row_labels, col_labels=col_labels, cell=shape[1:], xlabel="offset from the mean latent"
        )
    cells = decoded.reshape(dims, TRAVERSAL_STEPS, -1)
    fig = _figure(0.85 * TRAVERSAL_STEPS + 1.0, 0.9 * dims + 1.4)
    ax = fig.add_subplot()
    _plot_signal_cells(ax, cells, color="tab:blue")
    ax.set_xticks(np.arange(TRAVERSAL_STEPS) + 0.5, col_labels)
    ax.set_yticks(np.arange(dims)[::-1] + 0.5, row_labels)
    ax.set_xlabel("offset from the mean latent")
    ax.set_title(title)
    return fig


def _scatter_figure(latents: np.ndarray, labels: np.ndarray | None, num_classes: int | None) -> Figure:
    fig = _figure(6.5, 5.5)
    ax = fig.add_subplot()
    point = max(2.0, min(12.0, 4000.0 / max(1, len(latents))))
    if labels is None:
        ax.scatter(latents[:, 0], latents[:, 1], s=point, alpha=0.7, color="tab:blue", linewidths=0)
        ax.set_title("Test latents (encoder means)")
    elif (num_classes or 0) <= 20:
        # Few classes: distinct colours and a legend naming each class.
        cmap = _class_colours(num_classes or int(labels.max()) + 1)
        for c in np.unique(labels):
            m = labels == c
            ax.scatter(latents[m, 0], latents[m, 1], s=point, alpha=0.7, color=cmap[int(c)], label=str(int(c)), linewidths=0)
        ax.legend(title="class", markerscale=max(1.0, 20.0 / point) ** 0.5, loc="center left", bbox_to_anchor=(1.0, 0.5))
        ax.set_title("Test latents (encoder means) coloured by class")
    else:
        points = ax.scatter(latents[:, 0], latents[:, 1], c=labels, s=point, alpha=0.7, cmap="viridis", linewidths=0)
        fig.colorbar(points, ax=ax, label="class")
        ax.set_title("Test latents (encoder means) coloured by class")
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    return fig


def _class_colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _manifold_figure(
    model: AutoencoderModel, latents: np.ndarray, shape: tuple[int, ...], device: torch.device | str
) -> Figure:
    """Decode a regular grid over the test latents' bounding box; z[1] grows upwards, like
    the scatter plot's y axis, so the two figures line up."""
    lo, hi = latents.min(axis=0), latents.max(axis=0)
    z0 = np.linspace(lo[0], hi[0], MANIFOLD_SIZE)
    z1 = np.linspace(hi[1], lo[1], MANIFOLD_SIZE)  # top row = largest z[1]
    zz = np.stack(np.meshgrid(z0, z1), axis=-1).reshape(-1, 2)
    decoded = _decode(model, zz, device)
    title = f"Decoded {MANIFOLD_SIZE}x{MANIFOLD_SIZE} grid over the test latents' range"
    ticks = range(0, MANIFOLD_SIZE, 2)
    if _is_image_shape(shape):
        h, w = shape[1:]
        fig = _image_figure(image_grid(decoded.reshape(-1, *shape), nrow=MANIFOLD_SIZE), title)
        ax = fig.axes[0]
        ax.set_xticks([1 + i * (w + 1) + (w - 1) / 2 for i in ticks], [f"{z0[i]:.2g}" for i in ticks])
        ax.set_yticks([1 + i * (h + 1) + (h - 1) / 2 for i in ticks], [f"{z1[i]:.2g}" for i in ticks])
        ax.tick_params(length=3, labelsize=8)
    else:
        fig = _figure(11.0, 9.0)
        ax = fig.add_subplot()
        _plot_signal_cells(ax, decoded.reshape(MANIFOLD_SIZE, MANIFOLD_SIZE, -1), color="tab:blue", linewidth=0.8)
        ax.set_xticks([i + 0.5 for i in ticks], [f"{z0[i]:.2g}" for i in ticks])
        ax.set_yticks([MANIFOLD_SIZE - 1 - i + 0.5 for i in ticks], [f"{z1[i]:.2g}" for i in ticks])
        ax.set_title(title)
    ax.set_xlabel("z[0]")
    ax.set_ylabel("z[1]")
    return fig


def confusion_counts(model: ClassifierModel, data: ImageDataset, device: torch.device | str) -> np.ndarray:
    """``[C, C]`` int64 counts over the test split: row = true class, column = predicted class."""
    n = max(int(model.num_classes), int(data.num_classes or 0))
    counts = np.zeros((n, n), dtype=np.int64)
    with eval_mode(model):
        for batch in iterate_examples(data, "test", device):
            assert batch.y is not None
            predicted = model.predict(batch.x).detach().cpu().numpy()
            np.add.at(counts, (batch.y.cpu().numpy(), predicted), 1)
    return counts


def _confusion_figure(counts: np.ndarray) -> Figure:
    """Row-normalised confusion matrix: each row is how the test examples of one true class
    were classified, in percent, so rare and common classes read on one scale."""
    n = len(counts)
    totals = counts.sum(axis=1, keepdims=True)
    # A class without test examples gets an empty (all-zero) row rather than a division by zero.
    rates = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=np.float64), where=totals > 0)
    accuracy = np.trace(counts) / max(1, counts.sum())
    side = min(12.0, max(5.0, 0.5 * n + 2.0))
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot()
    image = ax.imshow(100.0 * rates, cmap="Blues", vmin=0.0, vmax=100.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="% of the true class", shrink=0.8)
    if n <= MAX_ANNOTATED_CLASSES:
        size = 9 if n <= 12 else 7 if n <= 20 else 5
        for i in range(n):
            for j in range(n):
                if counts[i, j] == 0:
                    continue  # blank cells keep the few mistakes easy to find
                pct = 100.0 * rates[i, j]
                text = f"{pct:.0f}" if pct >= 1.0 else "<1"
                # Dark cells get white text, light ones black, so every number stays readable.
                ax.text(j, i, text, ha="center", va="center", fontsize=size, color="white" if pct > 55 else "black")
    step = 1 if n <= MAX_ANNOTATED_CLASSES else max(1, n // 20)
    ticks = list(range(0, n, step))
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_yticks(ticks, [str(t) for t in ticks])
    ax.tick_params(length=0)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(
        f"Confusion matrix, test split ({int(counts.sum())} examples, accuracy {100 * accuracy:.1f}%)\n"
        "each row: where one true class went, in % of its examples"
    )
    return fig


def write_model_figures(
    model: Model,
    data: ImageDataset,
    out_dir: Path,
    device: torch.device | str,
    seed: int = 0,
    tb_writer: Any = None,
    step: int = 0,
) -> list[Path]:
    """Write the PNGs the model allows into ``out_dir`` and return their paths.

    * ``reconstructions.png`` (autoencoders): test inputs next to their reconstructions;
    * ``samples.png`` (generative models): decoded samples from the prior;
    * ``traversals.png`` (autoencoders): the mean test latent decoded while each of the first
      8 dims sweeps -3σ..+3σ of its spread over the test latents, one row per dim;
    * ``latent_scatter.png`` and ``manifold.png`` (2-D latents only): the test latents
      coloured by label, and decodings of a 15 x 15 grid over the range they cover;
    * ``confusion_matrix.png`` (classifiers on labelled test data): true class by predicted
      class over the whole test split, each row normalised to percent of its class.

    Image data is drawn as images, vector data as line plots. Each figure also goes to
    ``tb_writer`` (a TensorBoard ``SummaryWriter``) as ``figures/<name>`` at ``step``. Runs
    in evaluation mode without gradients and puts the model's mode back; the examples shown
    and the samples drawn depend only on ``seed``. Any other model gets none.
    """
    if not isinstance(model, (AutoencoderModel, ClassifierModel)):
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shape = tuple(data.shape)
    written: list[Path] = []

    def save(name: str, fig: Figure) -> None:
        path = out_dir / f"{name}.png"
        image = _render(fig)
        fig.savefig(path, dpi=fig.dpi)
        if tb_writer is not None:
            tb_writer.add_image(f"figures/{name}", image, step, dataformats="HWC")
        written.append(path)

    if isinstance(model, ClassifierModel):
        if data.y_test is not None and len(data.y_test) > 0:
            save("confusion_matrix", _confusion_figure(confusion_counts(model, data, device)))
        return written
    assert isinstance(model, AutoencoderModel)

    # A seeded random handful of test examples: varied classes, the same ones every call.
    n_test = len(data.x_test)
    if n_test == 0:
        return written
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(n_test, size=min(N_RECONSTRUCTIONS, n_test), replace=False))
    x = torch.as_tensor(data.to_float(data.x_test[pick]), dtype=torch.float32, device=device)
    save("reconstructions", _reconstructions_figure(model, x))

    if isinstance(model, GenerativeModel):
        save("samples", _samples_figure(model, shape, device, seed))

    latents = encode_split(model, data, "test", device)
    save("traversals", _traversal_figure(model, latents, shape, device))

    if model.latent_dim == 2:
        labels = None if data.y_test is None else np.asarray(data.y_test)
        save("latent_scatter", _scatter_figure(latents, labels, data.num_classes))
        save("manifold", _manifold_figure(model, latents, shape, device))
    return written


def write_dream_strip(real: np.ndarray, dreamt: np.ndarray, out_dir: Path, tb_writer: Any = None, step: int = 0) -> Path:
    """``dream.png`` of a world model: a test episode's real frames (top row) over the frames
    its M dreams from the first of them under the same actions (bottom row; column 0 is V's
    reconstruction of the first frame). Both are ``[T + 1, C, H, W]`` in ``[0, 1]``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(real)
    grid = image_grid(np.concatenate([_to_numpy(real), _to_numpy(dreamt)]), nrow=n)
    columns = [f"t={t}" if t % 4 == 0 else "" for t in range(n)]  # every label would crowd small frames
    fig = _image_figure(grid, "Real frames (top) and the world model's dream under the same actions (bottom)",
                        row_labels=["real", "dreamt"], col_labels=columns, cell=tuple(real.shape[2:4]))
    path = out_dir / "dream.png"
    image = _render(fig)
    fig.savefig(path, dpi=fig.dpi)
    if tb_writer is not None:
        tb_writer.add_image("figures/dream", image, step, dataformats="HWC")
    return path
