"""Named parameter sets: `standard`, `broad`, the one-factor domain shifts, the notebook's recipes.

`standard` is narrow and easy: similar cells, similar images; it is what the teaching example
trains on and the centre every `shift-*` preset moves away from. `broad` is the training preset
for real images ("train wide, test narrow"): heavy-tailed per-cell brightness with a few very
bright cells, per-image gain, offset and gamma, sizes from small fragments to large cells,
elongation up to 3 : 1, touching cells without a dark gap, lower and varying signal-to-noise,
varying blur. Its one-line description lists every knob it changes from `standard`.

Every `shift-*` preset is `standard` with the knobs listed in `SHIFTS` changed and nothing else;
its one-line description in `PRESETS` is built from that table, so it always says exactly what
changed. Lengths are in pixels, densities in cells (or specks) per 256 x 256 px, intensities on
the [0, 1] scale of the output image.
"""

from __future__ import annotations

STANDARD: dict[str, float] = {
    # outlines
    "radius": 11.0,            # mean cell radius, px
    "radius_std": 1.5,         # spread of radii, px
    "radius_spread": 0.0,      # per-image larger cells: radius and radius_std x exp(U(0, s)),
                               # density / that^2 (about the same share of the image covered)
    "elongation": 0.2,         # aspect ratio = 1 + |N(0, elongation)|
    "max_aspect": 2.5,         # ... capped at this ratio
    "irregularity": 0.05,      # amplitude of the outline's harmonic wiggles
    "fragments": 0.0,          # probability that a cell is a small fragment (0.3-0.6 x radius)
    # crowding
    "density": 34.0,           # mean number of cells per 256 x 256 px
    "touching": 0.2,           # probability that a cell is placed against an earlier one
    "overlap": 0.12,           # placed-against cells overlap by up to this fraction (occlusion)
    "min_size": 30,            # smallest instance kept, px (smaller remnants become background)
    # cell appearance
    "contrast": 0.4,           # mean brightness of a cell above the background
    "contrast_std": 0.08,      # spread of cell brightness
    "brightness_sigma": 0.0,   # per-cell lognormal gain exp(N(0, sigma)): heavy-tailed brightness
    "bright_fraction": 0.0,    # fraction of cells made bright_gain times brighter still
    "bright_gain": 3.0,        # how much brighter those few cells are
    "edge_falloff": 0.3,       # rim is dimmer than the centre by this fraction
    "texture": 0.12,           # relative amplitude of smooth internal texture
    "texture_scale": 2.0,      # correlation length of the texture, px
    "texture_spread": 0.0,     # per-image texture and chromatin amplitudes x exp(U(-s, s))
    # what real nuclei add (off in `standard`): chromatin, nucleoli, bright foci, defocus
    "chromatin": 0.0,          # relative amplitude of fine, clumpy chromatin texture
    "chromatin_scale": 1.2,    # its correlation length, px
    "nucleoli": 0.0,           # mean number of dark nucleoli per cell
    "nucleolus_radius": 2.0,   # their size (Gaussian std), px
    "nucleolus_depth": 0.5,    # their centre is this fraction darker than the cell around
    "spots": 0.0,              # mean number of bright foci per cell
    "spot_gain": 1.0,          # their centre is this fraction brighter than the cell around
    "defocus": 0.0,            # fraction of cells out of the focal plane (blurred, dimmer edge)
    "defocus_blur": 2.5,       # their extra blur, px
    # background and illumination
    "background": 0.1,         # background level
    "gradient": 0.1,           # total relative span of the linear illumination gradient
    "vignetting": 0.1,         # relative darkening at the image corners' distance
    # distractors (unlabelled)
    "debris": 6.0,             # small bright specks per 256 x 256 px
    "debris_intensity": 0.3,   # their mean brightness above background
    "blobs": 3.0,              # out-of-focus cell-sized blobs per 256 x 256 px
    "blob_intensity": 0.15,    # their mean peak brightness before blurring
    "blob_blur": 4.0,          # their extra blur, px
    # optics and camera
    "blur": 1.0,               # Gaussian PSF std, px
    "photons": 400.0,          # expected photons at intensity 1 (shot noise)
    "read_noise": 0.015,       # Gaussian read-noise std
    # per-image exposure (0 = the same for every image)
    "gain_spread": 0.0,        # image gain exp(U(-s, s))
    "gamma_spread": 0.0,       # image gamma exp(U(-s, s))
    "offset": 0.0,             # image offset U(0, offset)
    "blur_spread": 0.0,        # image blur = blur * U(1 - s, 1 + s)
    "photons_spread": 0.0,     # image photons = photons * exp(U(-s, s))
}

# "train wide, test narrow": what `broad` changes relative to `standard`
BROAD_CHANGES: dict[str, float] = {
    "radius": 12.0, "radius_std": 3.0, "fragments": 0.08,          # fragments to large cells
    "radius_spread": 0.4,                                           # images of 12-18 px radius
    "elongation": 0.7, "max_aspect": 3.0, "irregularity": 0.08,     # elongated, up to 3 : 1
    "touching": 0.3, "edge_falloff": 0.1,                           # touching, no dark gap
    "brightness_sigma": 0.5, "bright_fraction": 0.04,               # a few very bright cells
    "texture": 0.15, "gradient": 0.2, "vignetting": 0.2,
    "blur": 1.4, "blur_spread": 0.5,                                # 0.7-2.1 px PSF
    "photons": 200.0, "photons_spread": 0.9, "read_noise": 0.02,    # lower, varying SNR
    "gain_spread": 0.4, "gamma_spread": 0.3, "offset": 0.1,         # per-image exposure
    "texture_spread": 0.7, "chromatin": 0.3, "nucleoli": 1.0,       # real nuclei's interiors:
    "spots": 1.0,                                                   # chromatin, nucleoli, foci
}
BROAD: dict[str, float] = {**STANDARD, **BROAD_CHANGES}

# name -> (what it models, the knobs it changes relative to `standard`)
SHIFTS: dict[str, tuple[str, dict[str, float]]] = {
    "shift-small": ("smaller cells", {"radius": 7.5, "radius_std": 1.0, "min_size": 20}),
    "shift-large": ("larger cells", {"radius": 16.0, "radius_std": 2.0}),
    "shift-dense": ("denser, more touching cells", {"density": 60.0, "touching": 0.45}),
    "shift-noise": ("more shot and read noise", {"photons": 130.0, "read_noise": 0.035}),
    "shift-blur": ("a blurrier PSF", {"blur": 2.2}),
    "shift-contrast": ("dimmer cells", {"contrast": 0.22, "contrast_std": 0.05}),
    "shift-illumination": ("uneven illumination", {"gradient": 0.5, "vignetting": 0.45}),
    "shift-shape": ("elongated, irregular outlines", {"elongation": 0.45, "irregularity": 0.15}),
    "shift-texture": ("coarser, stronger internal texture",
                      {"texture": 0.3, "texture_scale": 3.0}),
    "shift-chromatin": ("textured interiors: clumpy chromatin and dark nucleoli",
                        {"chromatin": 0.35, "nucleoli": 1.5, "nucleolus_depth": 0.55}),
    "shift-uneven": ("uneven nuclei: dim rims, bright foci, some out of focus",
                     {"edge_falloff": 0.55, "spots": 2.0, "defocus": 0.25}),
    "shift-distractors": ("more and brighter debris and out-of-focus blobs",
                          {"debris": 12.0, "debris_intensity": 0.33, "blobs": 6.0,
                           "blob_intensity": 0.17}),
    "shift-brightness": ("heavy-tailed cell brightness, a few very bright cells",
                         {"brightness_sigma": 0.6, "bright_fraction": 0.03}),
    "shift-elongated": ("elongated cells, up to 3 : 1",
                        {"elongation": 0.9, "max_aspect": 3.0}),
    "shift-sizes": ("a wide range of sizes, small fragments included",
                    {"radius_std": 3.5, "fragments": 0.12}),
    "shift-combined": ("several moderate shifts at once",
                       {"radius": 9.0, "density": 45.0, "touching": 0.4, "photons": 200.0,
                        "read_noise": 0.025, "blur": 1.5, "contrast": 0.3, "gradient": 0.3,
                        "vignetting": 0.25, "irregularity": 0.1, "debris": 10.0}),
}

# The public notebook's recipe (lucasmtse/Introduction_CNN_U_NET), intensities on 0-255.
# Ranges are [low, high) as numpy's integers(); draws are (minimum, mean, std) of
# max(minimum, int(N(mean, std))); sigma is the std of each draw's int(N(0, sigma)) offset.
REFERENCE: dict[str, object] = {
    "background": [0, 50],
    "n_cells": [75, 200],
    "cell_draws": [1000, 3124, 5000],
    "cell_sigma": 1.0,
    "centre_margin": 4,
    "cell_intensity": [150, 220],
    "n_salt": [4000, 8000],
    "salt_intensity": [50, 220],
    "n_distractors": [50, 150],
    "distractor_draws": [750, 1500, 1500],
    "distractor_sigma": 1.0,
    "distractor_intensity": [100, 185],
}

REFERENCE_SHIFTED: dict[str, object] = {
    "background": [10, 80],
    "n_cells": [30, 60],
    "cell_draws": [2500, 6000, 2000],
    "cell_sigma": 2.0,
    "centre_margin": 10,
    "cell_intensity": [160, 255],
    "n_salt": [1000, 2000],
    "salt_intensity": [90, 200],
    "n_distractors": [30, 60],
    "distractor_draws": [1000, 3000, 1500],
    "distractor_sigma": 2.0,
    "distractor_intensity": [100, 220],
}


def _describe_shift(what: str, changes: dict[str, float]) -> str:
    moves = ", ".join(f"{k} {STANDARD[k]:g} -> {v:g}" for k, v in changes.items())
    return f"standard with {what}: {moves}"


PRESETS: dict[str, str] = {
    "standard": (f"star-convex cells, radius ~{STANDARD['radius']:g} px, "
                 f"~{STANDARD['density']:g} per 256x256, some touching, mild blur and noise, "
                 "uneven background, a few unlabelled distractors (narrow: for teaching)"),
    "broad": _describe_shift("the variety of real images (train wide, test narrow)",
                             BROAD_CHANGES).replace("standard with", "the training preset:", 1),
    **{name: _describe_shift(what, changes) for name, (what, changes) in SHIFTS.items()},
    "reference": ("the notebook's recipe: 75-199 pixel-cloud cells (sigma 1) on uniform noise, "
                  "4000-7999 salt pixels, 50-149 distractor clouds"),
    "reference-shifted": ("the notebook's test recipe: 30-59 larger clouds (sigma 2), brighter, "
                          "fewer salt pixels and distractors"),
}


def preset_params(preset: str) -> dict:
    """A fresh copy of a preset's full parameter set."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    if preset == "reference":
        return {k: (list(v) if isinstance(v, list) else v) for k, v in REFERENCE.items()}
    if preset == "reference-shifted":
        return {k: (list(v) if isinstance(v, list) else v) for k, v in REFERENCE_SHIFTED.items()}
    params = dict(BROAD if preset == "broad" else STANDARD)
    if preset in SHIFTS:
        params.update(SHIFTS[preset][1])
    return params
