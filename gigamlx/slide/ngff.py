"""OME-Zarr 0.5 (NGFF) metadata for the slide store: RGB multiscales and a tissue label image.

Pure dictionaries, written into the `attributes` of zarr v3 `zarr.json` files by store.py.
"""

from __future__ import annotations

from gigamlx.core.units import to_um

NGFF_VERSION = "0.5"


def _axes(names: str, mpp: float | None) -> list[dict]:
    unit = {"unit": "micrometer"} if mpp else {}
    return [
        {"name": "c", "type": "channel"} if n == "c" else {"name": n, "type": "space", **unit}
        for n in names
    ]


def _multiscales(name: str, axes: str, n_levels: int, mpp: float | None) -> list[dict]:
    datasets = [
        {
            "path": str(n),
            "coordinateTransformations": [
                {"type": "scale", "scale": [1.0] * ("c" in axes) + [(mpp or 1.0) * 2**n] * 2}
            ],
        }
        for n in range(n_levels)
    ]
    method = "2x2 mean" if "c" in axes else "2x2 top-left pick"
    return [
        {
            "name": name,
            "axes": _axes(axes, mpp),
            "datasets": datasets,
            "type": "mean" if "c" in axes else "nearest",
            "metadata": {"method": method},
        }
    ]


def _omero() -> dict:
    channels = [
        {"label": name, "color": color, "active": True, "coefficient": 1.0, "family": "linear"}
        | {"inverted": False, "window": {"start": 0, "end": 255, "min": 0, "max": 255}}
        for name, color in (("R", "FF0000"), ("G", "00FF00"), ("B", "0000FF"))
    ]
    return {"channels": channels, "rdefs": {"model": "color"}}


def image_attrs(n_levels: int, mpp: float | None) -> dict:
    """Group attributes of a (c, y, x) RGB image with `n_levels` 2x levels."""
    multiscales = _multiscales("image", "cyx", n_levels, mpp)
    return {"ome": {"version": NGFF_VERSION, "multiscales": multiscales, "omero": _omero()}}


def labels_attrs(names: list[str]) -> dict:
    """Attributes of the `labels` group listing the label images under it."""
    return {"ome": {"version": NGFF_VERSION, "labels": names}}


def label_attrs(name: str, n_levels: int, mpp: float | None) -> dict:
    """Attributes of a (y, x) label image: 0 = background, 1 = `name`, source two levels up."""
    image_label = {
        "colors": [{"label-value": 1, "rgba": [0, 200, 80, 128]}],
        "source": {"image": "../../"},
    }
    multiscales = _multiscales(name, "yx", n_levels, mpp)
    return {
        "ome": {"version": NGFF_VERSION, "multiscales": multiscales, "image-label": image_label}
    }


def _probability_omero() -> dict:
    """Rendering for viewers (napari-ome-zarr, OMERO): green, 0..255 = p 0..1, greyscale."""
    window = {"start": 0, "end": 255, "min": 0, "max": 255}
    channel = {"label": "tissue probability", "color": "00BE5A", "window": window}
    channel |= {"active": True, "coefficient": 1.0, "family": "linear", "inverted": False}
    return {"name": "tissue probability", "channels": [channel], "rdefs": {"model": "greyscale"}}


def probability_attrs(n_levels: int, mpp: float | None) -> dict:
    """Group attributes of a (y, x) uint8 probability map, round(255 p), with 2x2-mean levels."""
    multiscales = _multiscales("tissue probability", "yx", n_levels, mpp)
    multiscales[0] |= {"type": "mean", "metadata": {"method": "2x2 mean"}}
    ome = {"version": NGFF_VERSION, "multiscales": multiscales, "omero": _probability_omero()}
    return {"ome": ome}


def first_multiscale(attrs: dict) -> dict | None:
    """The first multiscale of a zarr group's attributes (0.5: under "ome"; 0.4: top level)."""
    multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    return multiscales[0] if multiscales else None


def multiscale_arrays(group) -> tuple[list, list[str] | None]:
    """The one multiscale reader: a group's arrays, finest first, and its axis names.

    Raises:
        KeyError: the group has no multiscales metadata.
    """
    multiscale = first_multiscale(dict(group.attrs))
    if multiscale is None:
        raise KeyError("no NGFF multiscales metadata")
    axes = multiscale.get("axes")
    names = [a["name"] if isinstance(a, dict) else str(a) for a in axes] if axes else None
    return [group[d["path"]] for d in multiscale["datasets"]], names


def _axis_names_units(multiscale: dict) -> tuple[list[str], list[str | None]]:
    """Axis names and units of a multiscale (0.4+: dicts; 0.3: bare names, no units)."""
    axes = multiscale.get("axes", ["t", "c", "z", "y", "x"][-len(multiscale.get("datasets", [])) :])
    names = [a["name"] if isinstance(a, dict) else str(a) for a in axes]
    units = [a.get("unit") if isinstance(a, dict) else None for a in axes]
    return names, units


def _scale_of(transforms: list[dict] | None, n_axes: int) -> list[float]:
    """The product of the `scale` transforms in a coordinateTransformations list."""
    scale = [1.0] * n_axes
    for transform in transforms or []:
        if transform.get("type") == "scale" and len(transform.get("scale", [])) == n_axes:
            scale = [a * float(b) for a, b in zip(scale, transform["scale"], strict=True)]
    return scale


def level_scales_x(multiscale: dict) -> tuple[list[float], str | None]:
    """Each dataset's x pixel size in the x axis's unit, finest first, and that unit.

    Dataset transforms are multiplied by the multiscale's own `coordinateTransformations`
    (NGFF 0.4/0.5), as ome-zarr-py and ngff-zarr write them. No transforms: 1.0 each.
    """
    names, units = _axis_names_units(multiscale)
    x = names.index("x") if "x" in names else len(names) - 1
    outer = _scale_of(multiscale.get("coordinateTransformations"), len(names))
    scales = [
        _scale_of(d.get("coordinateTransformations"), len(names))[x] * outer[x]
        for d in multiscale["datasets"]
    ]
    return scales, units[x]


def multiscale_mpp(multiscale: dict) -> float | None:
    """µm per pixel of the finest level, from its scale and the x axis unit; None if unitless."""
    scales, unit = level_scales_x(multiscale)
    if unit is None or "coordinateTransformations" not in multiscale["datasets"][0]:
        return None
    return to_um(scales[0], unit)
