"""Slides in and out: readers, OME-Zarr stores, NGFF metadata, masks, GeoJSON.

The Otsu baseline's definition lives here (no imports) so the CLI can show it in --help cheaply.
"""

OTSU_FIT_MAX_PIXELS = 4096 * 4096
OTSU_DEFINITION = (
    "tissue where the HSV saturation, box-smoothed over 9x9 px, exceeds Otsu's threshold of "
    "the saturation histogram of the finest pyramid level with at most 4096x4096 pixels "
    "(the coarsest level, sampled every k-th pixel, if none is that small)"
)
