"""The stages of one job: validate, read, render, encode, write; timings and progress.

This is the only module that knows the order of things. Each stage is a small
function over plain values; `process_file` and `describe_file` string them together.
"""

from __future__ import annotations

import functools
import json
import os
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioError

from geoworker.errors import InvalidInput, Unsupported
from geoworker.processing import encode, georef, metadata, read, render, style, validate
from geoworker.processing.messages import library_messages
from geoworker.processing.options import Options

# every error GDAL or rasterio raises about a file (rasterio's own and GDAL's CPLE_* classes)
GDAL_ERRORS = (RasterioError, georef.CPLE_BaseError)

Progress = Callable[[int, str], None]

STATS_SIZE = 1024  # long side of the decimated read that describe_file takes statistics from
READ_THREADS = min(4, os.cpu_count() or 1)


@dataclass
class Run:
    """Bookkeeping of one call: stage timings, warnings, progress."""

    progress: Progress | None
    name: str = ""  # the input's file name, for log lines
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @contextmanager
    def stage(self, name: str, start: int, message: str) -> Iterator[None]:
        self.report(start, message)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t0, 4)

    def report(self, percent: int, message: str) -> None:
        if self.progress is not None:
            self.progress(percent, message)

    def warn(self, *messages: str) -> None:
        """Keep a warning for the result and the metadata, and log it once (INFO: a job's log, not a CLI's stderr)."""
        for m in messages:
            if m not in self.warnings:
                self.warnings.append(m)
                _log(f"{self.name}: {m}")


def _log(line: str) -> None:
    # loguru is imported only when there is something to say: it costs 5 MB of RSS and
    # 30 ms in a process that only runs the pipeline (the benchmark, `geoworker process`)
    from loguru import logger

    logger.info(line)


@dataclass
class Source:
    path: Path
    file_size: int
    header: validate.TiffHeader | None
    ds: rasterio.DatasetReader
    geo: metadata.Georeference
    pages: int


def sanitise_stem(name: str) -> str:
    """Args: name: a file name or stem. Returns: a safe file stem ([A-Za-z0-9._-], no leading dot)."""
    stem = Path(str(name)).name
    for suffix in (".tiff", ".tif", ".gtiff", ".geotiff"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._-")[:120]
    return stem or "output"


def open_source(src: Path, options: Options, run: Run, stack: ExitStack) -> Source:
    size = validate.check_file_size(src, options.max_file_size)
    header = None
    if options.validate_headers:
        header = validate.read_tiff_header(src)
    try:
        ds = stack.enter_context(rasterio.open(src, driver="GTiff"))
    except GDAL_ERRORS as exc:
        raise InvalidInput(f"the file is not a readable GeoTIFF: {read.gdal_message(exc)}") from None
    if ds.width <= 0 or ds.height <= 0:
        raise InvalidInput(f"the TIFF declares zero dimensions ({ds.width} x {ds.height} pixels)")
    complex_types = sorted({d for d in ds.dtypes if d.startswith("complex")})
    if complex_types:
        raise Unsupported(f"the TIFF holds complex-valued pixels ({', '.join(complex_types)}), which cannot be "
                          "rendered as an image; convert it to a real data type first")
    unknown = sorted({d for d in ds.dtypes if not _numpy_type(d)})
    if unknown:
        raise Unsupported(f"the TIFF holds pixels of type {', '.join(unknown)}, which cannot be rendered as an image")
    validate.check_budget(ds.width, ds.height, [np.dtype(d).itemsize for d in ds.dtypes], ds.dtypes[0],
                          options.max_pixels, options.max_decoded_bytes)
    pages = max(1, len(ds.subdatasets))
    if pages > 1:
        run.warn(f"the TIFF holds {pages} images (pages); only the first was processed")
    geo, notes = metadata.read_georeference(ds)
    run.warn(*notes)
    return Source(src, size, header, ds, geo, pages)


def _numpy_type(name: str) -> bool:
    try:
        return np.dtype(name).kind in "uif"
    except TypeError:
        return False


def file_doc(source: Source, sha256: str | None) -> dict:
    doc = {"name": source.path.name, "size": source.file_size, "sha256": sha256, "pages": source.pages}
    if source.header is not None:
        doc["bigtiff"] = source.header.bigtiff
    return doc


def summary_doc(source: Source, options: Options) -> dict:
    doc = metadata.dataset_summary(source.ds, source.geo, options.rpc_height)
    if source.header is not None:  # GDAL does not say whether a one-block image is tiled; the header does
        doc["tiled"] = source.header.tiled
    return doc


def statistics(data: np.ndarray, valid: np.ndarray | None, indexes, percentiles) -> list[render.BandStats]:
    return [render.band_statistics(data[k], valid, percentiles) for k in range(len(indexes))]


def choose_style(plan: read.BandPlan, stats, dtype, options: Options, ds: rasterio.DatasetReader,
                  run: Run) -> style.Style:
    """Every rendering decision for this file (see style.py: the tiler makes the same ones)."""
    if plan.kind == "rgb" and options.colormap:
        run.warn("colormap applies to single-band rendering only; it was ignored for this RGB image")
    colortable = ds.colormap(plan.indexes[0]) if plan.kind == "palette" else None
    return style.choose_style(plan.kind, stats, dtype, options.stretch, options.colormap, colortable, plan.classes,
                              plan.class_names, plan.class_colours)


def render_bands(data: np.ndarray, valid: np.ndarray | None, plan: read.BandPlan, stats, options: Options,
                 ds: rasterio.DatasetReader, run: Run) -> tuple[np.ndarray, np.ndarray | None, list]:
    """Stretch/colour read bands with the file's style: the rules the PNG, thumbnail and map products share.

    Args:
        data: (n, h, w) bands as read (plan.indexes); valid: their validity or None.
        plan: read.plan_bands' choice; stats: statistics() of the file, which fix the stretch.
        options: stretch and colormap; ds: the dataset (its colour table); run: collects warnings.
    Returns:
        (c, h, w) uint8 without alpha, validity (palette holes added), stretch ranges.
    """
    look = choose_style(plan, stats, data.dtype, options, ds, run)
    bands, valid = style.apply_style(look, data, valid)
    return bands, valid, list(look.ranges)


def _describe_body(crs: CRS) -> str:
    return georef.other_body(crs) or "Earth"


def _output_crs(options: Options, geo: metadata.Georeference, run: Run) -> CRS | None:
    """The CRS to warp to, or None to keep the source grid."""
    wanted = options.coordinate_system
    if wanted == "native":
        if geo.kind == "rpc":
            run.warn("coordinate_system native keeps the raw sensor grid of this RPC image, which has no map "
                     "coordinates; coordinate_system EPSG:4326 orthorectifies it with its RPC model")
        return None
    if geo.crs is None:
        run.warn(f"coordinate_system {wanted} was not applied: the file has no CRS to warp from, so the outputs "
                 "keep its pixel grid (native)")
        return None
    if geo.kind == "local":
        run.warn(f"coordinate_system {wanted} was not applied: the file's CRS is a local grid")
        return None
    target = CRS.from_user_input(wanted)
    if not georef.same_body(geo.crs, target):
        run.warn(f"coordinate_system {wanted} was not applied: the image is not on the same body as that CRS "
                 f"(the image: {_describe_body(geo.crs)}; {wanted}: {_describe_body(target)}), so the outputs "
                 "stay on the source grid (native); a CRS of the image's own body can be given instead")
        return None
    if geo.kind != "rpc" and target == geo.crs and not geo.rotated:
        return None
    return target


def detects_classes(options: Options) -> bool:
    """Args: options: a job's options. Returns: whether class rasters get class colours (no stretch or colormap asked)."""
    return options.stretch == "auto" and not options.colormap


def _stage_read(source: Source, options: Options, run: Run, shape: tuple[int, int]):
    plan = read.plan_bands(source.ds, options.bands, detects_classes(options))
    run.warn(*plan.warnings)
    data, valid = read.read_decimated(source.ds, plan, shape, options.resampling, READ_THREADS)
    return plan, data, valid


@dataclass(frozen=True)
class _Grid:
    """Where the rendered bands go: the source grid at output size, and the warp to another CRS, if any."""

    transform: Affine  # the source grid scaled to the read shape
    crs: CRS | None
    target: CRS | None = None  # None: no warp
    target_transform: Affine | None = None
    target_shape: tuple[int, int] = (0, 0)  # (height, width)
    rpcs: object | None = None  # the RPC model scaled to the read shape


def _plan_grid(source: Source, options: Options, run: Run, shape: tuple[int, int]) -> _Grid:
    """The output grid, decided before any pixel is read: an image that cannot be projected is
    refused without the cost of a read (and GDAL's transformer is set up while memory is low)."""
    height, width = shape
    geo, full = source.geo, (source.ds.width, source.ds.height)
    transform = georef.scaled_transform(geo.transform, full, (width, height))
    crs = None if geo.kind == "rpc" else geo.crs  # an RPC image's own grid has no map coordinates
    target = _output_crs(options, geo, run)
    if target is None:
        return _Grid(transform, crs)
    rpcs = georef.scaled_rpcs(geo.rpcs, full, (width, height)) if geo.kind == "rpc" else None
    try:
        dst_transform, w, h = georef.warp_grid(None if rpcs else transform, (width, height), geo.crs, target,
                                               options.max_size, rpcs, options.rpc_height)
    except georef.PROJ_ERRORS as exc:
        raise Unsupported(f"the image cannot be projected to {options.coordinate_system}: "
                          f"{read.gdal_message(exc)} (coordinate_system=native keeps the source grid)") from None
    return _Grid(transform, crs, target, dst_transform, (h, w), rpcs)


def _stage_warp(source: Source, options: Options, grid: _Grid, work: dict):
    """Place the rendered bands on the output grid (the source grid scaled, or warped to another CRS).

    Consumes work["bands"] and work["valid"]: nothing else holds them, so each array is
    freed as soon as its successor exists and the peak holds about two output images.
    """
    bands, valid = work.pop("bands"), work.pop("valid")
    if grid.target is None:
        return render.to_pixels(list(bands), valid), grid.transform, grid.crs
    try:
        bands, valid = georef.warp_image(bands, valid, None if grid.rpcs else grid.transform, source.geo.crs,
                                         grid.target_transform, grid.target, grid.target_shape,
                                         num_threads=READ_THREADS, rpcs=grid.rpcs, rpc_height=options.rpc_height)
    except georef.PROJ_ERRORS as exc:
        raise Unsupported(f"the image cannot be projected to {options.coordinate_system}: "
                          f"{read.gdal_message(exc)} (coordinate_system=native keeps the source grid)") from None
    return render.to_pixels(list(bands), valid), grid.target_transform, grid.target


def _write_sidecars(out_dir: Path, stem: str, options: Options, transform, crs) -> dict[str, str | None]:
    image_name = f"{stem}.{options.extension}"
    names: dict[str, str | None] = {"world_file": f"{stem}.{options.world_file_extension}", "prj": None,
                                    "aux_xml": f"{image_name}.aux.xml"}
    encode.write_text(out_dir / names["world_file"], "\n".join(georef.world_file_lines(transform)) + "\n")
    if crs is not None:
        names["prj"] = f"{stem}.prj"
        encode.write_text(out_dir / names["prj"], crs.to_wkt(version="WKT1_ESRI") + "\n")
    encode.write_text(out_dir / names["aux_xml"], georef.pam_xml(crs, transform))
    return names


def stats_doc(stats, ranges, indexes, shape, stretch: str) -> dict:
    return {
        "statistics": [{"band": int(b), **s.as_dict()} for b, s in zip(indexes, stats)],
        "statistics_source": f"valid pixels of a decimated read of {shape[1]} x {shape[0]} pixels",
        "stretch": {"method": stretch, "ranges": [list(r) if r else None for r in ranges] or [None] * len(stats)},
    }


def write_metadata(run: Run, started: float, path: Path, doc: dict, outputs: dict) -> None:
    """<stem>.json: the document with the stage timings and warnings so far; named in outputs["metadata"]."""
    outputs["metadata"] = path.name
    run.timings["total"] = round(time.perf_counter() - started, 4)
    doc["timings"] = run.timings
    doc["warnings"] = run.warnings
    encode.write_text(path, json.dumps(metadata.json_safe(doc), indent=2) + "\n")


def finished(run: Run, started: float, outputs: dict, summary: dict) -> dict:
    """What every producer returns: {"outputs", "metadata" (summary), "timings", "warnings"}."""
    run.timings["total"] = round(time.perf_counter() - started, 4)
    run.report(100, "done")
    return {"outputs": outputs, "metadata": summary, "timings": dict(run.timings), "warnings": list(run.warnings)}


def _summary(doc: dict) -> dict:
    crs = doc.get("crs") or {}
    out = doc.get("output", {})
    return metadata.json_safe({
        "width": doc["width"], "height": doc["height"], "bands": doc["count"], "dtype": doc["dtypes"][0],
        "crs_epsg": crs.get("epsg"), "bounds_wgs84": doc.get("bounds_wgs84"),
        "output": {k: out.get(k) for k in ("format", "width", "height", "mode", "crs_epsg", "file_sizes",
                                           "thumbnail")},
    })


def gdal_errors_are_input_errors(func):
    """GDAL errors that escape a stage are about the file (the stages translate the ones they expect).

    An error GDAL raises while the file is opened, described or read is the file's fault:
    invalid_input, at once, never a retried internal_error. Libraries' warnings meanwhile go
    to the log once, naming the file (messages.py).
    """

    @functools.wraps(func)
    def wrapper(src, *args, **kwargs):
        with library_messages(Path(src).name):
            try:
                return func(src, *args, **kwargs)
            except GDAL_ERRORS as exc:
                raise InvalidInput(f"the TIFF cannot be read: {read.gdal_message(exc)}") from None

    return wrapper


@gdal_errors_are_input_errors
def process_file(src: str | Path, out_dir: str | Path, options: Options,
                 progress: Progress | None = None, stem: str | None = None) -> dict:
    """Turn one GeoTIFF into a web image, thumbnail, world file, .prj, .aux.xml and metadata JSON.

    Args:
        src: the input GeoTIFF.
        out_dir: where the outputs go (created if missing).
        options: what to produce.
        progress: called with (percent, stage message) as stages start.
        stem: output file stem (default: the sanitised input stem).
    Returns:
        {"outputs": {kind: file name}, "metadata": summary, "timings": {stage: s}, "warnings": [...]}.
    """
    src, out_dir = Path(src), Path(out_dir)
    stem = sanitise_stem(stem or src.name)
    run = Run(progress, src.name)
    started = time.perf_counter()
    with ExitStack() as stack, read.gdal_env(), ThreadPoolExecutor(1) as pool:
        with run.stage("validate", 2, "validating the input"):
            source = open_source(src, options, run, stack)
            sha: Future = pool.submit(metadata.sha256_file, src)  # overlaps the read; hashlib frees the GIL
            doc = summary_doc(source, options)
        shape = read.output_shape(source.ds.width, source.ds.height, options.max_size)
        with run.stage("warp", 8, "choosing the output grid"):
            grid = _plan_grid(source, options, run, shape)
        with run.stage("read", 10, f"reading {source.ds.width} x {source.ds.height} pixels at {shape[1]} x {shape[0]}"):
            plan, data, valid = _stage_read(source, options, run, shape)
        with run.stage("render", 55, "rendering colours"):
            stats = statistics(data, valid, plan.indexes, options.percentiles)
            look = choose_style(plan, stats, data.dtype, options, source.ds, run)
            legend = style.legend(look, data, valid)
            bands, valid = style.apply_style(look, data, valid)
            work = {"bands": bands, "valid": valid}
            del data, bands, valid
        with run.stage("warp", 65, "georeferencing the output grid"):
            pixels, transform, crs = _stage_warp(source, options, grid, work)
        out_dir.mkdir(parents=True, exist_ok=True)
        outputs: dict[str, str | None] = {}
        sizes: dict[str, int] = {}
        with run.stage("encode", 75, f"encoding {options.output_format.upper()}"):
            outputs["image"] = f"{stem}.{options.extension}"
            sizes["image"] = encode.save_pixels(pixels, out_dir / outputs["image"], options.output_format,
                                              options.compression_quality)
            img = encode.to_pil(pixels)
            del pixels
            thumb_size = None
            if options.generate_thumbnails and options.thumbnail_size > 0:
                thumb = encode.make_thumbnail(img, options.thumbnail_size)
                outputs["thumbnail"] = f"{stem}_thumb.png"
                sizes["thumbnail"] = encode.save_image(thumb, out_dir / outputs["thumbnail"], "png", 0)
                thumb_size = {"width": thumb.width, "height": thumb.height}
            else:
                outputs["thumbnail"] = None
        with run.stage("write", 92, "writing world file, projection and metadata"):
            outputs.update(_write_sidecars(out_dir, stem, options, transform, crs))
            doc["file"] = file_doc(source, sha.result())
            doc.update(stats_doc(stats, look.ranges, plan.indexes, shape, options.stretch))
            doc["rendered_bands"] = list(plan.indexes)
            doc["render_mode"] = plan.kind
            doc["style"] = look.as_dict()
            if legend:
                doc["legend"] = legend
            doc["output"] = {
                "format": options.output_format, "width": img.width, "height": img.height, "mode": img.mode,
                "coordinate_system": options.coordinate_system, "crs": metadata.crs_summary(crs),
                "crs_epsg": (metadata.crs_summary(crs) or {}).get("epsg"),
                "transform": [transform.a, transform.b, transform.c, transform.d, transform.e, transform.f],
                "world_file": georef.world_file_lines(transform), "thumbnail": thumb_size, "file_sizes": sizes,
            }
            write_metadata(run, started, out_dir / f"{stem}.json", doc, outputs)
    return finished(run, started, outputs, _summary(doc))


@gdal_errors_are_input_errors
def describe_file(src: str | Path, options: Options) -> dict:
    """The metadata document of a GeoTIFF (what <stem>.json holds, minus outputs); writes nothing.

    Args:
        src: the input GeoTIFF.
        options: validation limits, stretch percentiles.
    Returns:
        the JSON-serialisable metadata dict.
    """
    src = Path(src)
    run = Run(None, src.name)
    started = time.perf_counter()
    with ExitStack() as stack, read.gdal_env():
        with run.stage("validate", 0, "validating"):
            source = open_source(src, options, run, stack)
            doc = summary_doc(source, options)
        with run.stage("read", 0, "statistics"):
            ds = source.ds
            shape = read.output_shape(ds.width, ds.height, STATS_SIZE)
            plan = read.plan_bands(ds, None)
            all_bands = read.BandPlan(plan.kind, tuple(b for b in range(1, ds.count + 1) if b != plan.alpha)[:64],
                                      plan.alpha, plan.mask)
            data, valid = read.read_decimated(ds, all_bands, shape, options.resampling)
            stats = statistics(data, valid, all_bands.indexes, options.percentiles)
        doc["file"] = file_doc(source, metadata.sha256_file(src))
        doc.update(stats_doc(stats, [None] * len(stats), all_bands.indexes, shape, options.stretch))
        doc["stretch"] = {"method": options.stretch}
    run.timings["total"] = round(time.perf_counter() - started, 4)
    doc["timings"] = run.timings
    doc["warnings"] = run.warnings
    return metadata.json_safe(doc)
