"""The segmentation loss an attack drives, over the same sliding windows the evaluation uses.

`SegmentationObjective.value_and_grad(x_adv)` returns the quantity the attacker wants to INCREASE and its
gradient with respect to the full-volume input:

* untargeted (default): the mean over windows of MONAI `DiceCELoss(to_onehot_y=True, softmax=True,
  squared_pred=True, smooth_nr=0, smooth_dr=1e-6)` (background included, as in the papers) to `target`;
* targeted ("organ removal", needs organs): −DiceCE to target', i.e. `target` with the chosen organs set to
  background.

Windows: exactly the positions of `monai.inferers.sliding_window_inference(x, roi_size, sw_batch_size,
model, overlap, mode="gaussian")` — MONAI's scan-interval rule and `dense_patch_slices`, on the volume
zero-padded (symmetrically, like MONAI) where it is smaller than the ROI; for an nnU-Net model (`window_rule`
"nnunet") nnU-Net's positions on the volume padded with its `pad_value` (see `models.segment`). The loss is computed per window
(on the window's un-padded voxels) and averaged over windows; the blending mode does not enter the loss.
Windows are run `sw_batch_size` at a time; each batch's input gradient is added into one full-volume
gradient tensor, so peak memory is that of one window batch plus two volumes.

Organ focus (`organs`): Dice over those organs' channels only (targeted: background + organs, since the
organs' channels have no target voxel left and hence no Dice gradient) and cross-entropy over the voxels that
belong to those organs in `target` (no dilation: false positives next to the organ already raise the
squared-prediction Dice denominator). Windows without any voxel of those organs are dropped from the
objective (untargeted, their loss is a constant 1 with zero gradient; a speed-up), so the mean runs over the
windows that contain the organs.

Per-voxel weights (`value_and_grad(x, voxel_weights=...)`, for SegPGD and CosPGD): a function of the
window batch's logits (detached) and target (`target'` when targeted) that returns one weight per voxel
[n, 1, *spatial]; each voxel's cross-entropy is multiplied by it (still divided by the number of voxels the CE
averages over, as in both papers); the Dice term is unchanged. Without it nothing extra is computed.

Region (`region`): windows that do not intersect it only ever see the clean image (attacks keep x_adv equal
to x outside the region), so they contribute a constant to the loss and nothing to the gradient: their loss
is computed once, without gradient, on the first call and reused, and only the windows that intersect the
region run forward and backward, so a step costs in proportion to them. The windows are not grown by the
model's receptive field: each window is run on its own crop of the volume (zero-padded only where the volume
is smaller than the ROI, as MONAI does), so a window's output depends on the voxels inside it and nowhere
else, however far the network sees; a window that holds one region voxel is run whole, and its receptive
field inside the crop is the network's business. The gradient's scale stays 1/(all windows of the
objective), so the balance against SA²'s SSIM term does not depend on the region.

The DiceCE is evaluated by `dice_ce` (equal to MONAI's to ~1e-7, tested) with a written-out backward that
runs in cache-sized chunks of voxels: about 3 memory passes over the logits instead of ~15 through autograd.
The backward flushes denormal entries of the logits' gradient (below the dtype's smallest normal number,
1.2e-38 in float32) to zero. Away from an organ its softmax probability p is tiny and the organ-focused
Dice gradient there (~p²) is denormal; x86 CPUs compute with denormals far more slowly, and the whole
backward through the network inherits them (an organ-region PGD step on example_ct took 1.6x as long).
Flushing changes the gradient by less than 1.2e-38 per entry; on example_ct the written adversarial volumes
were bit-identical with and without it (PGD and SA², organ region and whole volume). CPU and GPU flush alike.

The model is put in eval mode and its parameters stop requiring grad during each call; both are restored
afterwards, and parameter `.grad` fields are never touched (gradients via `torch.autograd.grad`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch

from ..errors import InputError
from ..models.labels import require_organs_present
from ..models.segment import pad_for_windows, window_slices

VoxelWeights = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""voxel_weights(logits [n, C, *spatial], target [n, 1, *spatial]) -> per-voxel CE weights [n, 1, *spatial]."""

SMOOTH_DR = 1e-6  # MONAI DiceLoss smooth_dr as in the published scripts (smooth_nr = 0)


CHUNK_ELEMENTS = 1 << 18  # logits elements per chunk (1 MiB): the loss runs in L2 cache, chunk by chunk


class _DiceCE(torch.autograd.Function):
    """Per-window DiceCE with a closed-form backward, evaluated in cache-sized chunks of voxels.

    Forward keeps the softmax probabilities and per-class sums; backward writes the logits' gradient once,
    chunk by chunk (four passes over the logits instead of ~15 through autograd, no second exp, no gather of p).
    """

    @staticmethod
    def forward(ctx, logits, target, channel_weights, ce_weights):
        # logits [n, C, V]; target [n, 1, V] long; channel_weights [C] (1/K on the Dice channels, else 0);
        # ce_weights [n, 1, V] (per-voxel CE weight, each window's weights summing to 1).
        n, n_classes, voxels = logits.shape
        step = max(256, CHUNK_ELEMENTS // (n * n_classes))
        intersection = logits.new_zeros(n, n_classes)
        ground = logits.new_zeros(n, n_classes)
        squares = logits.new_zeros(n, n_classes)
        ce = logits.new_zeros(n)
        all_probs = torch.empty_like(logits)
        target_probs = logits.new_empty(n, 1, voxels)  # p at the target class, kept for the backward
        flat_target = target.reshape(n, voxels)
        ground.scatter_add_(1, flat_target, logits.new_ones(()).expand(n, voxels))
        for s in range(0, voxels, step):
            z = logits[:, :, s : s + step]
            t = target[:, :, s : s + step]
            top = z.amax(dim=1, keepdim=True)
            probs = torch.sub(z, top, out=all_probs[:, :, s : s + step]).exp_()
            total = probs.sum(dim=1, keepdim=True)
            probs.div_(total)
            log_sum_exp = total.log_().add_(top)
            log_p_target = z.gather(1, t).sub_(log_sum_exp)  # one gather; p_t = exp(z_t − logsumexp)
            ce -= (log_p_target * ce_weights[:, :, s : s + step]).sum(dim=(1, 2))
            p_target = torch.exp(log_p_target, out=target_probs[:, :, s : s + step])
            intersection.scatter_add_(1, flat_target[:, s : s + step], p_target.view(n, -1))
            squares += torch.linalg.vector_norm(probs, dim=2).square_()  # one fused pass, no temporary
        denominator = ground + squares + SMOOTH_DR
        dice = ((1.0 - 2.0 * intersection / denominator) * channel_weights).sum(dim=1)
        ctx.step = step
        ctx.save_for_backward(
            all_probs, target_probs, target, intersection, denominator, channel_weights, ce_weights
        )
        return dice + ce

    @staticmethod
    def backward(ctx, grad):
        all_probs, target_probs, target, intersection, denominator, channel_weights, ce_weights = (
            ctx.saved_tensors
        )
        voxels = all_probs.shape[-1]
        g = grad.view(-1, 1)
        # d loss / d p_c(v) = a_c·p_c(v) + b_c·[c = target(v)];  d loss / d z via the softmax Jacobian, plus CE.
        a = (4.0 * intersection / denominator**2 * channel_weights * g).unsqueeze(-1)  # [n, C, 1]
        b = -2.0 / denominator * channel_weights * g  # [n, C]
        grad_logits = torch.empty_like(all_probs)
        for s in range(0, voxels, ctx.step):
            t = target[:, :, s : s + ctx.step]
            probs = all_probs[:, :, s : s + ctx.step]
            p_target = target_probs[:, :, s : s + ctx.step]
            b_target = b.gather(1, t.squeeze(1)).unsqueeze(1)
            w = ce_weights[:, :, s : s + ctx.step] * grad.view(-1, 1, 1)
            # out = a·p² first, then out += p·(w − r) with r = Σ_c a_c p_c² + b_t p_t: four passes, no temporary
            out = torch.mul(a, probs, out=grad_logits[:, :, s : s + ctx.step]).mul_(probs)
            r = out.sum(dim=1, keepdim=True) + b_target * p_target
            out.addcmul_(probs, w - r)
            out.scatter_add_(1, t, b_target * p_target - w)
            out.masked_fill_(out.abs() < torch.finfo(out.dtype).tiny, 0.0)  # no denormals (module docstring)
        return grad_logits, None, None, None


def dice_ce(
    logits: torch.Tensor,
    target: torch.Tensor,
    channels: Sequence[int] | None = None,
    ce_mask: torch.Tensor | None = None,
    voxel_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """MONAI DiceCELoss(to_onehot_y, softmax, squared_pred, smooth_nr 0, smooth_dr 1e-6) of every item, [n].

    logits [n, C, *spatial], target [n, 1, *spatial] (labels). channels: Dice only over these (default all,
    background included). ce_mask (bool, like target): CE averaged over these voxels only (0 if none).
    voxel_weights (like target, no gradient): each voxel's CE multiplied by it, still divided by the number of
    voxels averaged over.
    """
    n, n_classes = logits.shape[:2]
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    flat = logits.reshape(n, n_classes, -1).to(dtype)
    flat_target = target.reshape(n, 1, -1).to(torch.long)
    if channels is None:
        channel_weights = torch.full((n_classes,), 1.0 / n_classes, dtype=dtype, device=logits.device)
    else:
        channel_weights = torch.zeros(n_classes, dtype=dtype, device=logits.device)
        channel_weights[list(channels)] = 1.0 / len(channels)
    if ce_mask is None:
        ce_weights = torch.full((1, 1, 1), 1.0 / flat.shape[-1], dtype=dtype, device=logits.device)
        ce_weights = ce_weights.expand(n, 1, flat.shape[-1])
    else:
        ce_weights = ce_mask.reshape(n, 1, -1).to(dtype)
        ce_weights = ce_weights / ce_weights.sum(dim=2, keepdim=True).clamp_min(1.0)
    if voxel_weights is not None:
        ce_weights = ce_weights * voxel_weights.detach().reshape(n, 1, -1).to(dtype)
    return _DiceCE.apply(flat, flat_target, channel_weights, ce_weights)


@contextlib.contextmanager
def frozen_eval(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no parameter gradients inside the block; previous state restored afterwards."""
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    was_training = model.training
    model.eval()
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)


class SegmentationObjective:
    """Windowed DiceCE objective; see the module docstring. Input/target [1, 1, X, Y, Z] on `device`."""

    def __init__(
        self,
        model: torch.nn.Module,
        target: torch.Tensor,
        roi_size: Sequence[int],
        overlap: float,
        sw_batch_size: int,
        organs: Sequence[int] | None = None,
        targeted: bool = False,
        device: torch.device | str = "cpu",
        region: torch.Tensor | None = None,
        window_rule: str = "monai",
        pad_value: float = 0.0,
    ):
        self.model = model
        self.device = torch.device(device)
        if target.ndim != 5 or target.shape[:2] != (1, 1):
            raise ValueError(f"target must be [1, 1, X, Y, Z], got {tuple(target.shape)}.")
        if target.is_floating_point():
            raise ValueError("target must be an integer label map.")
        roi_size = tuple(int(r) for r in roi_size)
        if len(roi_size) != 3 or min(roi_size) < 1:
            raise InputError(f"--roi-size must be three positive integers, got {roi_size}.")
        if not 0 <= float(overlap) < 1:
            raise InputError(f"--overlap must be in [0, 1), got {overlap}.")
        if int(sw_batch_size) < 1:
            raise InputError(f"--sw-batch-size must be at least 1, got {sw_batch_size}.")
        self.roi_size = roi_size
        self.overlap = float(overlap)
        self.sw_batch_size = int(sw_batch_size)
        self.targeted = bool(targeted)
        self.image_size = tuple(int(n) for n in target.shape[2:])
        self.target = target.to(self.device, torch.long)

        self.organs = None if organs is None else [int(o) for o in organs]
        if self.organs is not None:
            if not self.organs:
                raise InputError("--organ needs at least one label value.")
            for organ in self.organs:
                if organ <= 0:
                    raise InputError(
                        f"--organ {organ} is background or negative; give organ label values >= 1."
                    )
            present = set(torch.unique(self.target).tolist())
            require_organs_present({str(o): o for o in self.organs}, present, "the target label map")
        if self.targeted and self.organs is None:
            raise InputError(
                "--targeted needs --organ: it removes the chosen organs (sets them to background)."
            )

        slices, self.pads = window_slices(self.image_size, roi_size, self.overlap, window_rule)
        self.pad_value = float(pad_value)
        self.n_windows_total = len(slices)
        # Per window: slice into the padded volume, slice into the unpadded volume (its valid part), and the
        # crop of the window output that is valid (non-padding); the crop is the same for every window.
        self._valid_crop = (slice(None), slice(None)) + tuple(
            slice(lo, lo + n) if lo + hi else slice(None)
            for (lo, hi), n in zip(self.pads, self.image_size, strict=True)
        )
        windows = []
        for sl in slices:
            inner = tuple(
                slice(0, n) if lo + hi else s
                for s, (lo, hi), n in zip(sl, self.pads, self.image_size, strict=True)
            )
            windows.append((sl, inner))
        if self.organs is not None:
            organ_values = torch.tensor(self.organs, device=self.device)
            self._organ_values = organ_values
            windows = [w for w in windows if torch.isin(self.target[(0, 0, *w[1])], organ_values).any()]
        self._windows = windows
        if region is not None:
            region = region.to(self.device, torch.bool)
            active = [bool(region[(0, 0, *w[1])].any()) for w in windows]
        else:
            active = [True] * len(windows)
        self._active = [w for w, a in zip(windows, active, strict=True) if a]
        self._inactive = [w for w, a in zip(windows, active, strict=True) if not a]
        self._inactive_loss_sum: float | None = None
        self.last_loss: float | None = None
        self._n_classes: int | None = None

    @property
    def n_windows(self) -> int:
        """Windows that enter the objective (all sliding windows, or those that contain the focused organs)."""
        return len(self._windows)

    @property
    def n_active_windows(self) -> int:
        """Windows run forward+backward on every call (those that intersect the region)."""
        return len(self._active)

    # ----------------------------------------------------------------------------------------------
    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        return pad_for_windows(x, self.pads, self.pad_value)  # MONAI: 0; nnU-Net: its z = 0

    def _batches(self, windows: list) -> Iterator[list]:
        for start in range(0, len(windows), self.sw_batch_size):
            yield windows[start : start + self.sw_batch_size]

    def _check_classes(self, n_classes: int) -> None:
        largest = int(self.target.max())
        if largest >= n_classes:
            raise InputError(
                f"the target has label {largest} but the model predicts only {n_classes} classes."
            )
        if self.organs is not None and max(self.organs) >= n_classes:
            raise InputError(
                f"--organ {max(self.organs)} is not a label of this model ({n_classes} classes)."
            )
        self._n_classes = n_classes

    def _window_losses(
        self, logits: torch.Tensor, batch: list, voxel_weights: VoxelWeights | None = None
    ) -> torch.Tensor:
        """DiceCE of every window of the batch, shape [n] (see module docstring for the organ focus and the
        per-voxel weights)."""
        logits = logits[self._valid_crop]
        n_classes = logits.shape[1]
        if self._n_classes != n_classes:
            self._check_classes(n_classes)
        target = torch.stack([self.target[(0, slice(None), *inner)] for _, inner in batch])  # [n, 1, ...]
        channels, in_organs = None, None
        if self.organs is not None:
            in_organs = torch.isin(target, self._organ_values)
            if self.targeted:
                target = torch.where(in_organs, torch.zeros_like(target), target)
                channels = [0, *self.organs]
            else:
                channels = list(self.organs)
        weights = None
        if voxel_weights is not None:
            with torch.no_grad():
                weights = voxel_weights(logits.detach(), target)
        return dice_ce(logits, target, channels, in_organs, weights)

    def _windows_input(self, padded: torch.Tensor, batch: list) -> torch.Tensor:
        return torch.stack([padded[(0, slice(None), *sl)] for sl, _ in batch])

    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape) != (1, 1, *self.image_size):
            raise ValueError(f"input must be [1, 1, {self.image_size}], got {tuple(x.shape)}.")
        return x.detach().to(self.device, torch.float32)

    def _inactive_sum(self, padded: torch.Tensor) -> float:
        if self._inactive_loss_sum is None:
            total = 0.0
            with torch.no_grad():
                for batch in self._batches(self._inactive):
                    total += float(
                        self._window_losses(self.model(self._windows_input(padded, batch)), batch).sum()
                    )
            self._inactive_loss_sum = total
        return self._inactive_loss_sum

    def _signed(self, mean_loss: float) -> float:
        self.last_loss = mean_loss
        return -mean_loss if self.targeted else mean_loss

    def value_and_grad(
        self, x_adv: torch.Tensor, voxel_weights: VoxelWeights | None = None
    ) -> tuple[float, torch.Tensor]:
        """(objective, d objective / d x_adv) for x_adv [1, 1, X, Y, Z]; the gradient has x_adv's shape.

        `last_loss` then holds the mean DiceCE (to target, or to target' when targeted); with `voxel_weights`
        (see the module docstring) the CE of the windows run here is weighted.
        """
        x = self._check_input(x_adv)
        padded = self._pad(x)
        grad = torch.zeros_like(padded)
        scale = (-1.0 if self.targeted else 1.0) / len(self._windows)
        total = torch.zeros((), device=self.device)
        with frozen_eval(self.model):
            inactive = self._inactive_sum(padded) if self._inactive else 0.0
            for batch in self._batches(self._active):
                windows = self._windows_input(padded, batch).requires_grad_(True)
                losses = self._window_losses(self.model(windows), batch, voxel_weights)
                (window_grad,) = torch.autograd.grad(losses.sum() * scale, windows)
                total += losses.detach().sum()
                for i, (sl, _) in enumerate(batch):
                    grad[(0, slice(None), *sl)] += window_grad[i]
        mean_loss = (float(total) + inactive) / len(self._windows)
        if padded is not x:
            grad = grad[self._valid_crop].contiguous()
        return self._signed(mean_loss), grad

    @torch.no_grad()
    def value(self, x_adv: torch.Tensor) -> float:
        """The objective alone (forward passes only; the windows outside the region as in `value_and_grad`)."""
        padded = self._pad(self._check_input(x_adv))
        total = 0.0
        with frozen_eval(self.model):
            inactive = self._inactive_sum(padded) if self._inactive else 0.0
            for batch in self._batches(self._active):
                total += float(
                    self._window_losses(self.model(self._windows_input(padded, batch)), batch).sum()
                )
        return self._signed((total + inactive) / len(self._windows))
