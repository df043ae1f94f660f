"""Task geotiff_to_cog: a full-resolution Cloud-Optimized GeoTIFF, plus the PNG task's metadata and thumbnail.

GDAL's COG driver (through rasterio) writes the file: 512 px tiles, overviews down to
<= 256 px, invalid pixels kept invalid, then rio-cogeo validates it. The exception is
the default for 8-bit RGB(A) orthophotos, a JPEG COG on the source's grid: cog_jpeg.py
writes the same file with libjpeg-turbo (rasterio's GDAL has the 2.5x slower IJG
libjpeg). Everything that decides *how* (compression, predictor, overview resampling,
overview count, whether nodata must become an internal mask, which writer) is a pure
function of the dataset's structure (`cog_plan`), so tests can check the choices
without writing files.

Lossy compression (JPEG, WebP) cannot keep a nodata value exact: an invalid pixel next
to valid ones comes back a little off zero, and a valid dark pixel may come back as
"nodata". So for lossy output a nodata value becomes an internal mask, through a VRT
whose mask band is "valid where any band is valid" (the PNG task's rule), and the
COG driver writes that mask beside the JPEG tiles. Lossless output keeps nodata as is.
"""

from __future__ import annotations

import importlib
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import rasterio
import rasterio.shutil
from rasterio.enums import ColorInterp

from geoworker.errors import GeoworkerError, Unsupported
from geoworker.processing import cog_jpeg, encode, georef, metadata, read, render
from geoworker.processing.map_options import CogOptions
from geoworker.processing.pipeline import (
    READ_THREADS,
    STATS_SIZE,
    Progress,
    Run,
    Source,
    detects_classes,
    file_doc,
    finished,
    gdal_errors_are_input_errors,
    open_source,
    render_bands,
    sanitise_stem,
    statistics,
    stats_doc,
    summary_doc,
    write_metadata,
)

BLOCK_SIZE = 512
SMALLEST_OVERVIEW = 256  # overviews go down until the long side is at most this
LOSSY = ("jpeg", "webp")
# The COG driver's working cache: its overview pass reads the source through it. 5% of RAM
# (GDAL's default) is what made gdal_translate reach 1.5 GB on a 1 GB input.
COG_CACHE_MB = 128


class CogInvalid(GeoworkerError):
    """The written COG failed rio-cogeo's validation (a bug here, not the input's fault)."""


@dataclass(frozen=True)
class CogPlan:
    """How the COG is written: creation options and where invalid pixels go."""

    compression: str  # jpeg | webp | deflate | lzw | zstd
    creation: dict  # GDAL COG creation options
    mask: str  # "nodata" | "internal mask" | "alpha" | "none": how invalid pixels are kept
    nodata_to_mask: bool  # whether the source goes through a VRT that turns nodata into a mask
    categorical: bool
    writer: str = "gdal"  # "gdal": GDAL's COG driver; "jpeg": cog_jpeg (libjpeg-turbo tiles)
    source_mask: str = "none"  # how the source marks invalid pixels (read.BandPlan.mask), for cog_jpeg


def overview_count(width: int, height: int, smallest: int = SMALLEST_OVERVIEW) -> int:
    """How many halvings bring the long side to at most `smallest` (GDAL rounds each level up).

    Args:
        width, height: the full-resolution size.
        smallest: the long side of the last overview.
    Returns:
        the number of overview levels (0 when the image is already small enough).
    """
    size, count = max(width, height), 0
    while size > smallest:
        size = -(-size // 2)
        count += 1
    return count


def is_rgb8(dtypes: list[str], colorinterp: list[ColorInterp]) -> bool:
    """8-bit RGB or RGBA: three uint8 bands, or four whose last is alpha."""
    if any(d != "uint8" for d in dtypes):
        return False
    return len(dtypes) == 3 or (len(dtypes) == 4 and colorinterp[3] == ColorInterp.alpha)


def cog_plan(ds: rasterio.DatasetReader, plan: read.BandPlan, options: CogOptions,
             size: tuple[int, int] | None = None) -> CogPlan:
    """Choose compression, predictor, overviews and mask handling for one dataset.

    Args:
        ds: the open source.
        plan: read.plan_bands' choice (palette/categorical, mask kind).
        options: the job's COG options.
        size: (width, height) of the written grid when it differs from the source's
            (a Web-Mercator COG); None for the source's.
    Returns:
        a CogPlan.
    Raises:
        Unsupported: a lossy compression asked for data it cannot hold, named in the message.
    """
    dtypes, interp = list(ds.dtypes), list(ds.colorinterp)
    compression = options.compression or ("jpeg" if is_rgb8(dtypes, interp) else "deflate")
    if compression in LOSSY and any(d != "uint8" for d in dtypes):
        raise Unsupported(f"compression={compression} holds 8-bit data only and this file's bands are "
                          f"{', '.join(sorted(set(dtypes)))}: use deflate, lzw or zstd (lossless)")
    if compression == "webp" and not is_rgb8(dtypes, interp):
        raise Unsupported(f"compression=webp holds RGB or RGBA only and this file has {ds.count} band(s) "
                          "that are not: use jpeg, deflate, lzw or zstd")
    categorical = plan.kind in ("palette", "categorical")
    if compression in LOSSY and categorical:
        raise Unsupported(f"compression={compression} would blur the class values of this palette/categorical "
                          "raster: use deflate, lzw or zstd (lossless)")
    resampling = "NEAREST" if categorical else "AVERAGE"
    width, height = size or (ds.width, ds.height)
    creation: dict = {"BLOCKSIZE": BLOCK_SIZE, "COMPRESS": compression.upper(), "NUM_THREADS": "ALL_CPUS",
                      "RESAMPLING": resampling, "OVERVIEW_COUNT": overview_count(width, height),
                      "BIGTIFF": "IF_SAFER"}
    if compression in LOSSY:
        creation["QUALITY"] = options.base.compression_quality
    else:
        creation["PREDICTOR"] = "YES"  # horizontal differencing for integers, floating point for floats
    if options.tiling_scheme != "native":
        creation["TILING_SCHEME"] = options.tiling_scheme
    nodata_to_mask = compression in LOSSY and plan.mask == "nodata"
    if plan.mask == "alpha":
        mask = "internal mask" if compression == "jpeg" else "alpha"  # GDAL turns alpha into a mask for JPEG
    elif plan.mask == "per_dataset" or nodata_to_mask:
        mask = "internal mask"
    else:
        mask = plan.mask
    source_mask = read.plan_bands(ds, None).mask  # of the whole file, whatever bands the thumbnail shows
    writer = "jpeg" if own_jpeg_writer_fits(ds, compression, options, source_mask) else "gdal"
    return CogPlan(compression, creation, mask, nodata_to_mask, categorical, writer, source_mask)


def own_jpeg_writer_fits(ds: rasterio.DatasetReader, compression: str, options: CogOptions, source_mask: str) -> bool:
    """Whether cog_jpeg writes this COG: an 8-bit RGB(A) JPEG on the source's own grid.

    GDAL's driver keeps the rest: the lossless compressions (faster through GDAL than
    gdal_translate already), WebP, the Web-Mercator grid (a warp), and the georeferencing
    that is not a CRS + transform (GCPs, RPCs).
    """
    return (compression == "jpeg" and options.tiling_scheme == "native"
            and is_rgb8(list(ds.dtypes), list(ds.colorinterp)) and source_mask in cog_jpeg.MASK_KINDS
            and not ds.gcps[0] and ds.rpcs is None)


def nodata_mask_vrt(ds: rasterio.DatasetReader) -> str:
    """A VRT of the dataset without nodata values, whose mask band is valid where any band is valid.

    Args:
        ds: an open dataset whose bands have a nodata value (or are float, where NaN is invalid).
    Returns:
        the VRT XML, openable by rasterio as a dataset name.
    """
    src = quoteattr(str(ds.name))[1:-1]
    gdal_types = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
                  "int32": "Int32", "float32": "Float32", "float64": "Float64"}

    def source(band: str) -> str:
        return (f"<SimpleSource><SourceFilename relativeToVRT=\"0\">{src}</SourceFilename>"
                f"<SourceBand>{band}</SourceBand></SimpleSource>")

    bands = []
    for i, (dtype, ci) in enumerate(zip(ds.dtypes, ds.colorinterp), start=1):
        bands.append(f'<VRTRasterBand dataType="{gdal_types[dtype]}" band="{i}">'
                     f"<ColorInterp>{ci.name.capitalize()}</ColorInterp>{source(str(i))}</VRTRasterBand>")
    masks = "".join(source(f"mask,{i}") for i in range(1, ds.count + 1))
    # GDAL's "max" pixel function over the per-band masks (0 or 255): valid if any band is.
    mask = ('<MaskBand><VRTRasterBand dataType="Byte" subClass="VRTDerivedRasterBand">'
            f"<PixelFunctionType>max</PixelFunctionType>{masks}</VRTRasterBand></MaskBand>")
    srs = f"<SRS>{escape(ds.crs.to_wkt())}</SRS>" if ds.crs else ""
    gt = f"<GeoTransform>{', '.join(repr(float(v)) for v in ds.transform.to_gdal())}</GeoTransform>"
    return (f'<VRTDataset rasterXSize="{ds.width}" rasterYSize="{ds.height}">{srs}{gt}{mask}'
            f"{''.join(bands)}</VRTDataset>")


def write_cog(ds: rasterio.DatasetReader, path: Path, plan: CogPlan) -> None:
    """Write the COG: JPEG RGB(A) on the source grid with cog_jpeg, everything else with GDAL's COG driver.

    Args:
        ds: the open source.
        path: the file to write (a temporary name; the caller renames it).
        plan: cog_plan's choices.
    """
    if plan.writer == "jpeg":
        cog_jpeg.write_jpeg_cog(ds, path, plan.creation["QUALITY"], plan.creation["OVERVIEW_COUNT"],
                                plan.source_mask)
        return
    with ExitStack() as stack:
        source = ds
        if plan.nodata_to_mask:
            source = stack.enter_context(rasterio.open(nodata_mask_vrt(ds)))
        with rasterio.Env(GDAL_CACHEMAX=COG_CACHE_MB, GDAL_TIFF_INTERNAL_MASK=True):
            rasterio.shutil.copy(source, path, driver="COG", **plan.creation)


def web_mercator_size(ds: rasterio.DatasetReader, geo: metadata.Georeference) -> tuple[int, int]:
    """An upper bound of the size GDAL's COG driver gives a GoogleMapsCompatible copy.

    The driver picks the zoom whose resolution is closest to the warped source's and
    aligns the extent to that zoom's 256 px tiles; counting those tiles (morecantile)
    bounds the size, which is all the overview count needs.

    Args:
        ds: the source; geo: its georeferencing.
    Returns:
        (width, height) in pixels.
    """
    import morecantile
    from rasterio.warp import calculate_default_transform, transform_bounds

    left, bottom, right, top = georef.grid_bounds(geo.transform, ds.width, ds.height)
    transform, w, h = calculate_default_transform(geo.crs, "EPSG:3857", ds.width, ds.height,
                                                  left=left, bottom=bottom, right=right, top=top)
    tms = morecantile.tms.get("WebMercatorQuad")
    zoom = tms.zoom_for_res(abs(transform.a), zoom_level_strategy="auto")
    west, south, east, north = transform_bounds(geo.crs, "EPSG:4326", left, bottom, right, top, densify_pts=21)
    tiles = list(tms.tiles(west, max(south, -85.05), east, min(north, 85.05), [zoom]))
    if not tiles:
        raise ValueError("the file lies wholly outside the Web-Mercator square (latitudes beyond +-85.05 degrees)")
    xs, ys = [t.x for t in tiles], [t.y for t in tiles]
    return (max(xs) - min(xs) + 2) * 256, (max(ys) - min(ys) + 2) * 256


def _tile_matrix(cog: rasterio.DatasetReader) -> dict:
    """The zoom levels a GoogleMapsCompatible COG holds (morecantile's WebMercatorQuad)."""
    import morecantile

    tms = morecantile.tms.get("WebMercatorQuad")
    zoom = tms.zoom_for_res(abs(cog.transform.a), zoom_level_strategy="auto")
    return {"scheme": "GoogleMapsCompatible", "maxzoom": zoom, "minzoom": zoom - len(cog.overviews(1))}


def _validate(path: Path, run: Run) -> dict:
    cog_validate = importlib.import_module("rio_cogeo.cogeo").cog_validate
    valid, errors, warnings = cog_validate(str(path), quiet=True)
    if not valid or errors:
        raise CogInvalid(f"the written COG is not valid: {'; '.join(errors) or 'rio-cogeo said so'}")
    run.warn(*(f"COG validation: {w}" for w in warnings))
    return {"valid": True, "errors": errors, "warnings": warnings}


def _preview(cog: rasterio.DatasetReader, options: CogOptions, run: Run):
    """Statistics and the thumbnail, from the COG's own overviews (a read of a few hundred kB)."""
    base = options.base
    plan = read.plan_bands(cog, base.bands, detects_classes(base))
    shape = read.output_shape(cog.width, cog.height, STATS_SIZE)
    data, valid = read.read_decimated(cog, plan, shape, base.resampling, threads=READ_THREADS)
    stats = statistics(data, valid, plan.indexes, base.percentiles)
    bands, valid, ranges = render_bands(data, valid, plan, stats, base, cog, run)
    return plan, shape, stats, ranges, encode.to_pil(render.to_pixels(list(bands), valid))


def _output_doc(cog: rasterio.DatasetReader, plan: CogPlan, options: CogOptions) -> dict:
    t = cog.transform
    crs = metadata.crs_summary(cog.crs)
    doc = {
        "format": "cog", "compression": plan.compression, "quality": plan.creation.get("QUALITY"),
        "predictor": plan.creation.get("PREDICTOR") is not None, "width": cog.width, "height": cog.height,
        "count": cog.count, "dtypes": list(cog.dtypes), "block_size": [BLOCK_SIZE, BLOCK_SIZE],
        "overviews": cog.overviews(1), "overview_resampling": plan.creation["RESAMPLING"].lower(),
        "invalid_pixels": plan.mask, "nodata": cog.nodata, "tiling_scheme": options.tiling_scheme,
        "writer": "geoworker (libjpeg-turbo)" if plan.writer == "jpeg" else "GDAL COG driver",
        "crs": crs, "crs_epsg": (crs or {}).get("epsg"), "transform": [t.a, t.b, t.c, t.d, t.e, t.f],
    }
    if options.tiling_scheme != "native":
        doc["tile_matrix"] = _tile_matrix(cog)
    return doc


def _summary(doc: dict) -> dict:
    crs = doc.get("crs") or {}
    out = doc["output"]
    return metadata.json_safe({
        "width": doc["width"], "height": doc["height"], "bands": doc["count"], "dtype": doc["dtypes"][0],
        "crs_epsg": crs.get("epsg"), "bounds_wgs84": doc.get("bounds_wgs84"),
        "output": {k: out.get(k) for k in ("format", "compression", "width", "height", "overviews", "crs_epsg",
                                           "tiling_scheme", "file_sizes", "thumbnail")},
    })


@gdal_errors_are_input_errors
def make_cog(src: str | Path, out_dir: str | Path, options: CogOptions, progress: Progress | None = None,
             stem: str | None = None) -> dict:
    """Turn one GeoTIFF into <stem>.cog.tif, <stem>_thumb.png and <stem>.json.

    Args:
        src: the input GeoTIFF.
        out_dir: where the outputs go (created if missing).
        options: compression, tiling scheme and the PNG task's options (thumbnail, stretch, limits).
        progress: called with (percent, stage message) as stages start.
        stem: output file stem (default: the sanitised input stem).
    Returns:
        {"outputs": {kind: file name}, "metadata": summary, "timings": {stage: s}, "warnings": [...]}.
    Raises:
        InvalidInput, TooLarge, Unsupported: the input (or a lossy compression it cannot take).
    """
    src, out_dir = Path(src), Path(out_dir)
    stem = sanitise_stem(stem or src.name)
    base = options.base
    run = Run(progress)
    started = time.perf_counter()
    with ExitStack() as stack, read.gdal_env(), ThreadPoolExecutor(2) as pool:
        with run.stage("validate", 2, "validating the input"):
            source = open_source(src, base, run, stack)
            sha = pool.submit(metadata.sha256_file, src)  # overlaps the COG write; hashlib frees the GIL
            pool.submit(importlib.import_module, "rio_cogeo.cogeo")  # 0.2 s of imports, off the critical path
            doc = summary_doc(source, base)
            size = _check_scheme(source, options)
            plan = cog_plan(source.ds, read.plan_bands(source.ds, base.bands, detects_classes(base)), options, size)
        out_dir.mkdir(parents=True, exist_ok=True)
        outputs: dict[str, str | None] = {"cog": f"{stem}.cog.tif"}
        sizes: dict[str, int] = {}
        with run.stage("cog", 5, f"writing a {plan.compression.upper()} COG of {source.ds.width} x "
                                 f"{source.ds.height} pixels with {plan.creation['OVERVIEW_COUNT']} overviews"):
            with encode.atomic_path(out_dir / outputs["cog"]) as tmp:
                write_cog(source.ds, tmp, plan)
                with run.stage("validate_cog", 85, "validating the COG"):
                    doc_validation = _validate(tmp, run)
                sizes["cog"] = tmp.stat().st_size
        with run.stage("thumbnail", 90, "statistics and thumbnail from the COG's overviews"):
            cog = stack.enter_context(rasterio.open(out_dir / outputs["cog"]))
            render_plan, shape, stats, ranges, img = _preview(cog, options, run)
            thumb_size = None
            outputs["thumbnail"] = None
            if base.generate_thumbnails and base.thumbnail_size > 0:
                thumb = encode.make_thumbnail(img, base.thumbnail_size)
                outputs["thumbnail"] = f"{stem}_thumb.png"
                sizes["thumbnail"] = encode.save_image(thumb, out_dir / outputs["thumbnail"], "png", 0)
                thumb_size = {"width": thumb.width, "height": thumb.height}
        with run.stage("write", 96, "writing metadata"):
            doc["file"] = file_doc(source, sha.result())
            doc.update(stats_doc(stats, ranges, render_plan.indexes, shape, base.stretch))
            doc["statistics_source"] = f"valid pixels of the COG read at {shape[1]} x {shape[0]} (its overviews)"
            doc["rendered_bands"] = list(render_plan.indexes)
            doc["render_mode"] = render_plan.kind
            doc["output"] = {**_output_doc(cog, plan, options), "validation": doc_validation,
                             "thumbnail": thumb_size, "file_sizes": sizes}
            write_metadata(run, started, out_dir / f"{stem}.json", doc, outputs)
    return finished(run, started, outputs, _summary(doc))


def _check_scheme(source: Source, options: CogOptions) -> tuple[int, int] | None:
    """The written grid's size for a Web-Mercator COG (None: the source's); refuses what cannot be warped."""
    if options.tiling_scheme == "native":
        return None
    geo = source.geo
    if geo.crs is None or geo.kind == "local":
        raise Unsupported(f"tiling_scheme={options.tiling_scheme} needs a georeferenced input and this file "
                          "has no map CRS; use tiling_scheme=native")
    bounds, _ = georef.footprint_wgs84(geo.crs, geo.transform, (source.ds.width, source.ds.height))
    if bounds is not None and bounds[2] > 180.0:  # continuous longitudes: across the antimeridian
        # GDAL (and gdal_translate) would write the whole world at a fraction of the resolution
        raise Unsupported(
            f"the file crosses the antimeridian ({bounds[0]:.2f} to {bounds[2] - 360.0:.2f} degrees of longitude): "
            f"a {options.tiling_scheme} COG of it would span the whole world at a fraction of its resolution; "
            "use tiling_scheme=native (the default), or geotiff_to_tiles, which tiles both sides of 180 degrees")
    try:
        return web_mercator_size(source.ds, geo)
    except (ValueError, georef.PROJ_ERRORS) as exc:
        raise Unsupported(f"the file cannot be placed on the {options.tiling_scheme} grid: "
                          f"{str(exc).splitlines()[0][:200]}") from None
