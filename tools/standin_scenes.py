"""Procedural "segment anything" scenes for pretraining the offline SAM stand-in.

Random textured shapes (ellipses, polygons, blobs) over random textured backgrounds, with box and point prompts
derived from the shapes' visible masks. Everything is drawn with an explicit `torch.Generator`, so a seed fixes
the whole stream. Used by `tools/pretrain_standin.py`.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

# SAM upsamples its image embedding 4x into the low-resolution masks it predicts.
MASK_UPSCALE = 4
# Fractal noise is built coarse to fine: white noise at each of these grid sizes, upsampled and summed.
NOISE_OCTAVES = (4, 8, 16, 32, 64)
MAX_POLYGON_VERTICES = 8
SHAPE_KINDS = ("ellipse", "polygon", "blob")
BLOB_HARMONICS = (2, 3, 4, 5)
BLOB_WOBBLE = (0.0, 0.22)  # amplitude of each harmonic, relative to the radius
ASPECT_RATIO = (0.35, 1.0)  # minor / major axis of every shape
NOISE_PERSISTENCE = (0.35, 0.85)  # amplitude ratio of successive noise octaves
COLOUR_NOISE = 0.4  # per-channel noise relative to luminance noise
# Texture amplitudes stay below the colour step between object and background (`--min_fill_contrast`), so that
# objects are told apart by appearance, as in natural images; fainter ones would teach a box-shaped guess instead.
TEXTURE_CONTRAST = (0.02, 0.12)  # standard deviation of the noise around a fill colour
RAMP_AMPLITUDE = 0.15  # largest brightness change of a linear ramp across the image
STRIPES_AMPLITUDE = (0.03, 0.1)
STRIPES_CYCLES = (2.0, 24.0)  # across the image
BACKGROUND_STRIPES_PROB, OBJECT_STRIPES_PROB = 0.3, 0.2
MAX_FILL_CONTRAST = 0.7
GAMMA = (0.7, 1.4)
PADDED_SHORT_SIDE = (0.5, 0.95)  # content fraction of the short side of a padded scene
LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights for grayscale scenes


@dataclass
class SceneBatch:
    """Procedural scenes and their prompts. `pixel_values` are normalised as SamProcessor normalises."""

    pixel_values: torch.Tensor  # (B, 3, S, S), zero where padded
    masks: torch.Tensor  # (B, P, S, S) bool, visible part of each prompted object
    boxes: torch.Tensor  # (B, P, 4) xyxy, jittered
    tight_boxes: torch.Tensor  # (B, P, 4) xyxy
    points: torch.Tensor  # (B, P, 1, 2) xy, one positive point inside the mask


class ProceduralScenes:
    """Random textured shapes over random textured backgrounds; everything is drawn with an explicit generator."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.size = args.image_size
        coords = torch.arange(self.size, dtype=torch.float32) + 0.5
        self.ys, self.xs = torch.meshgrid(coords, coords, indexing="ij")  # (S, S) each
        self.mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)

    def _uniform(self, shape: tuple[int, ...], low: float, high: float, gen: torch.Generator) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape, generator=gen)

    def noise_fields(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """`n` fractal-noise fields (n, 3, S, S) of unit standard deviation, mostly luminance with some colour."""
        persistence = self._uniform((n, 1, 1, 1), *NOISE_PERSISTENCE, gen)
        noise = torch.zeros(n, 3, NOISE_OCTAVES[0], NOISE_OCTAVES[0])
        for octave, grid in enumerate(NOISE_OCTAVES):
            noise = F.interpolate(noise, size=(grid, grid), mode="bilinear", align_corners=False)
            mono = torch.randn(n, 1, grid, grid, generator=gen)
            colour = COLOUR_NOISE * torch.randn(n, 3, grid, grid, generator=gen)
            noise = noise + persistence**octave * (mono + colour)
        # Normalised on the coarse grid (cheap); the final smooth upsampling keeps the scale close.
        noise = noise / noise.flatten(1).std(dim=1).view(n, 1, 1, 1).clamp(min=1e-6)
        return F.interpolate(noise, size=(self.size, self.size), mode="bilinear", align_corners=False)

    def patterns(self, n: int, gen: torch.Generator, *, stripes_prob: float) -> torch.Tensor:
        """A linear intensity ramp plus, with `stripes_prob`, sinusoidal stripes; (n, 1, S, S)."""
        angle = self._uniform((n, 1, 1), 0.0, 2 * math.pi, gen)
        ramp = (torch.cos(angle) * self.xs + torch.sin(angle) * self.ys) / self.size - 0.5  # (n, S, S)
        pattern = self._uniform((n, 1, 1), -RAMP_AMPLITUDE, RAMP_AMPLITUDE, gen) * ramp
        stripes_on = (torch.rand(n, 1, 1, generator=gen) < stripes_prob).float()
        frequency = self._uniform((n, 1, 1), *STRIPES_CYCLES, gen)
        phase = self._uniform((n, 1, 1), 0.0, 2 * math.pi, gen)
        direction = self._uniform((n, 1, 1), 0.0, math.pi, gen)
        along = (torch.cos(direction) * self.xs + torch.sin(direction) * self.ys) / self.size
        amplitude = stripes_on * self._uniform((n, 1, 1), *STRIPES_AMPLITUDE, gen)
        return (pattern + amplitude * torch.sin(2 * math.pi * frequency * along + phase)).unsqueeze(1)

    def shapes(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """`n` random shape masks (n, S, S) bool: ellipses, convex polygons and star-shaped blobs."""
        low, high = self.args.object_radius
        radius = self._uniform((n, 1, 1), low, high, gen) * self.size
        centre_x = self._uniform((n, 1, 1), 0.05, 0.95, gen) * self.size
        centre_y = self._uniform((n, 1, 1), 0.05, 0.95, gen) * self.size
        aspect = self._uniform((n, 1, 1), *ASPECT_RATIO, gen)
        rotation = self._uniform((n, 1, 1), 0.0, math.pi, gen)
        dx, dy = self.xs - centre_x, self.ys - centre_y  # (n, S, S)
        u = dx * torch.cos(rotation) + dy * torch.sin(rotation)
        v = (dy * torch.cos(rotation) - dx * torch.sin(rotation)) / aspect
        rho = torch.sqrt(u**2 + v**2)

        kind = torch.randint(len(SHAPE_KINDS), (n,), generator=gen)
        # Parameters are drawn for every shape so that the random stream does not depend on the kinds drawn.
        amplitude = self._uniform((n, len(BLOB_HARMONICS), 1, 1), *BLOB_WOBBLE, gen)
        offset = self._uniform((n, len(BLOB_HARMONICS), 1, 1), 0.0, 2 * math.pi, gen)
        num_vertices = torch.randint(3, MAX_POLYGON_VERTICES + 1, (n, 1), generator=gen)
        angles = torch.sort(self._uniform((n, MAX_POLYGON_VERTICES), 0.0, 2 * math.pi, gen), dim=1).values

        masks = rho <= radius  # ellipses; the other kinds overwrite their rows
        blob = (kind == SHAPE_KINDS.index("blob")).nonzero().flatten()
        if blob.numel():
            # The radius wobbles with a few low angular harmonics.
            phi = torch.atan2(v[blob], u[blob]).unsqueeze(1)  # (nb, 1, S, S)
            harmonics = torch.tensor(BLOB_HARMONICS, dtype=torch.float32).view(1, -1, 1, 1)
            wobble = 1.0 + (amplitude[blob] * torch.cos(harmonics * phi + offset[blob])).sum(dim=1)  # (nb, S, S)
            masks[blob] = rho[blob] <= radius[blob] * wobble
        polygon = (kind == SHAPE_KINDS.index("polygon")).nonzero().flatten()
        if polygon.numel():
            # Vertices at sorted angles on the ellipse make a convex polygon: inside = left of every edge. Polygons
            # with fewer vertices repeat their last one, and a zero-length edge leaves every pixel on its left.
            count = num_vertices[polygon]
            corner = angles[polygon]
            corner = torch.where(torch.arange(MAX_POLYGON_VERTICES) < count, corner, corner.gather(1, count - 1))
            vx = radius[polygon].view(-1, 1) * torch.cos(corner)  # (np, V)
            vy = radius[polygon].view(-1, 1) * torch.sin(corner)
            ex, ey = vx.roll(-1, dims=1) - vx, vy.roll(-1, dims=1) - vy  # edge vectors (np, V)
            pu, pv = u[polygon], v[polygon]
            inside = torch.ones_like(pu, dtype=torch.bool)
            for edge in range(MAX_POLYGON_VERTICES):
                e_x, e_y = ex[:, edge, None, None], ey[:, edge, None, None]
                o_x, o_y = vx[:, edge, None, None], vy[:, edge, None, None]
                inside &= e_x * (pv - o_y) >= e_y * (pu - o_x)
            masks[polygon] = inside
        return masks

    def sample(self, batch_size: int, gen: torch.Generator, *, jitter_boxes: bool = True) -> SceneBatch:
        args, size, k = self.args, self.size, self.args.max_objects
        background_colour = torch.rand(batch_size, 3, generator=gen)
        # Each object's colour lies at least `min_fill_contrast` from its background colour.
        direction = F.normalize(torch.randn(batch_size, k, 3, generator=gen), dim=-1)
        distance = self._uniform((batch_size, k, 1), args.min_fill_contrast, MAX_FILL_CONTRAST, gen)
        step = direction * distance  # (B, K, 3)
        # A step that leaves the colour cube is taken the other way, so clamping does not erase the contrast.
        forward = background_colour.unsqueeze(1) + step
        inside = ((forward >= 0.0) & (forward <= 1.0)).all(dim=-1, keepdim=True)
        object_colour = torch.where(inside, forward, background_colour.unsqueeze(1) - step).clamp(0.0, 1.0)
        contrast = self._uniform((batch_size, k + 1, 1, 1, 1), *TEXTURE_CONTRAST, gen)
        # Objects share one bank of noise fields, each image's objects taking different ones, so a batch builds two
        # fractal pyramids per image rather than one per object.
        background_noise, object_noise = self.noise_fields(2 * batch_size, gen).split(batch_size)
        image = background_colour[..., None, None] + contrast[:, 0] * background_noise
        image = image + self.patterns(batch_size, gen, stripes_prob=BACKGROUND_STRIPES_PROB)  # (B, 3, S, S)

        num_objects = torch.randint(1, k + 1, (batch_size, 1), generator=gen)
        active = torch.arange(k) < num_objects  # (B, K)
        masks = self.shapes(batch_size * k, gen).view(batch_size, k, size, size) & active[..., None, None]
        for index in range(k):
            fill = object_colour[:, index, :, None, None] + contrast[:, index + 1] * object_noise.roll(index, dims=0)
            fill = fill + self.patterns(batch_size, gen, stripes_prob=OBJECT_STRIPES_PROB)
            image = torch.where(masks[:, index].unsqueeze(1), fill, image)
        # An object is hidden where any object drawn after it lies.
        visible = torch.empty_like(masks)  # (B, K, S, S)
        covered = torch.zeros_like(masks[:, 0])
        for index in reversed(range(k)):
            visible[:, index] = masks[:, index] & ~covered
            covered |= masks[:, index]

        image = self._photometric(image, gen)
        pixel_values = (image - self.mean) / self.std
        content = torch.ones(batch_size, 1, size, size, dtype=torch.bool)
        padded = torch.rand(batch_size, generator=gen) < args.pad_prob
        for b in padded.nonzero().flatten().tolist():
            # SamProcessor pads a non-square image at the bottom or right, after normalising, with zeros.
            short = int(size * self._uniform((1,), *PADDED_SHORT_SIDE, gen))
            if torch.rand(1, generator=gen) < 0.5:
                content[b, :, short:, :] = False
            else:
                content[b, :, :, short:] = False
        pixel_values = pixel_values * content
        visible = visible & content

        area = visible.flatten(2).sum(-1)  # (B, K)
        full_area = masks.flatten(2).sum(-1).clamp(min=1)
        valid = (area >= args.min_object_pixels) & (area >= args.min_visible_fraction * full_area)
        # Valid objects first, in random order; slots beyond the valid ones repeat the first pick, and a scene with
        # no valid object prompts its largest visible one.
        fallback = torch.zeros_like(valid).scatter_(1, area.argmax(dim=1, keepdim=True), True)
        valid = torch.where(valid.any(dim=1, keepdim=True), valid, fallback)
        order = (torch.rand(batch_size, k, generator=gen) + 2.0 * valid).argsort(dim=1, descending=True)
        picks = order[:, : min(args.prompts_per_image, k)]
        picks = torch.where(valid.gather(1, picks), picks, picks[:, :1])
        if picks.shape[1] < args.prompts_per_image:
            picks = picks[:, torch.arange(args.prompts_per_image) % picks.shape[1]]
        target = visible[torch.arange(batch_size)[:, None], picks]  # (B, P, S, S)

        tight = masks_to_boxes(target)
        boxes = self._jitter(tight, gen) if jitter_boxes else tight
        # One pixel drawn uniformly from each mask: the r-th foreground pixel in raster order.
        cumulative = target.flatten(2).cumsum(-1)  # (B, P, S*S)
        rank = (torch.rand(cumulative.shape[:2], generator=gen) * cumulative[..., -1]).long()
        point_index = (cumulative <= rank.unsqueeze(-1)).sum(-1).clamp(max=size * size - 1)
        points = torch.stack([point_index % size, point_index // size], dim=-1).float()
        return SceneBatch(pixel_values, target, boxes, tight, points.unsqueeze(2))

    def _photometric(self, image: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        args, batch = self.args, image.shape[0]
        image = image.clamp(0.0, 1.0)
        gray = (torch.rand(batch, 1, 1, 1, generator=gen) < args.grayscale_prob).float()
        luminance = (image * torch.tensor(LUMINANCE).view(1, 3, 1, 1)).sum(1, keepdim=True)
        image = torch.lerp(image, luminance.expand_as(image), gray)
        blur = torch.rand(batch, generator=gen) < args.blur_prob
        if blur.any():
            # Upsampled low-resolution images (like small medical tiles through SamProcessor) look like this.
            half = F.interpolate(image[blur], scale_factor=0.5, mode="bilinear", antialias=True)
            image[blur] = F.interpolate(half, size=image.shape[-2:], mode="bilinear", align_corners=False)
        image = image ** self._uniform((batch, 1, 1, 1), *GAMMA, gen)
        noise_std = self._uniform((batch, 1, 1, 1), 0.0, args.max_noise_std, gen)
        return (image + noise_std * torch.randn(image.shape, generator=gen)).clamp(0.0, 1.0)

    def _jitter(self, boxes: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """SAM's box noise: each coordinate moves by N(0, box_noise * side), at most `box_noise_max` pixels."""
        sides = torch.cat([boxes[..., 2:] - boxes[..., :2]] * 2, dim=-1).clamp(min=1.0)
        noise = (torch.randn(boxes.shape, generator=gen) * self.args.box_noise * sides).clamp(
            -self.args.box_noise_max, self.args.box_noise_max
        )
        jittered = (boxes + noise).clamp(0.0, self.size - 1.0)
        low = torch.minimum(jittered[..., :2], jittered[..., 2:])
        high = torch.maximum(jittered[..., :2], jittered[..., 2:])
        return torch.cat([low, high], dim=-1)


class SceneStream(torch.utils.data.IterableDataset):
    """An endless, seeded stream of scene batches, drawn in a DataLoader worker so that drawing overlaps training."""

    def __init__(self, args: argparse.Namespace, seed: int) -> None:
        super().__init__()
        self.args, self.seed = args, seed

    def __iter__(self):
        scenes, gen = ProceduralScenes(self.args), torch.Generator().manual_seed(self.seed)
        while True:
            yield scenes.sample(self.args.batch_size, gen)


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """Tight xyxy boxes (inclusive pixel indices) of masks `(..., H, W)`; an empty mask gives the whole image."""
    height, width = masks.shape[-2:]
    cols, rows = masks.any(dim=-2), masks.any(dim=-1)  # (..., W), (..., H)
    x1 = torch.where(cols.any(-1), cols.float().argmax(-1), 0)
    x2 = torch.where(cols.any(-1), width - 1 - cols.flip(-1).float().argmax(-1), width - 1)
    y1 = torch.where(rows.any(-1), rows.float().argmax(-1), 0)
    y2 = torch.where(rows.any(-1), height - 1 - rows.flip(-1).float().argmax(-1), height - 1)
    return torch.stack([x1, y1, x2, y2], dim=-1).float()
