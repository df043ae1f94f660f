// The job's output on a Leaflet map: the tile layer when the job has tiles, else the image as an
// overlay on its WGS84 bounds, fitted to them. A basemap only when [ui] basemap_url is set;
// otherwise a plain background and no request to any other host.

import { config } from "./router.js";

/* global L */

/**
 * showOutput(element, {imageUrl, bounds: [west, south, east, north], tilejson, imageCrs}) -> handle.
 * handle.layer is the overlay or tile layer; handle.destroy() removes the map.
 */
export function showOutput(element, { imageUrl, bounds, tilejson, imageCrs }) {
  const basemap = config.basemapUrl;
  // Without a basemap or tiles, a plate carrée map shows an EPSG:4326 image exactly as it was
  // rendered; on a Web-Mercator map (basemap, tiles) its inside is stretched a little in latitude.
  const plate = !basemap && !tilejson && imageCrs === 4326;
  const map = L.map(element, { crs: plate ? L.CRS.EPSG4326 : L.CRS.EPSG3857, zoomSnap: 0.25,
                               attributionControl: Boolean(basemap || (tilejson && tilejson.attribution)) });
  if (map.attributionControl) map.attributionControl.setPrefix(false);
  if (basemap) {
    L.tileLayer(basemap, { maxZoom: 22, maxNativeZoom: 19, attribution: config.basemapAttribution || "" }).addTo(map);
  }
  let layer;
  let box = bounds;
  if (tilejson) {
    // the view fits the job's own bounds (across 180 degrees: east above 180, where TileJSON's
    // bounds span the whole width so that map libraries request both sides)
    box = bounds || tilejson.bounds;
    const layerBox = tilejson.bounds || bounds;
    const latLngBox = layerBox ? L.latLngBounds([layerBox[1], layerBox[0]], [layerBox[3], layerBox[2]]) : undefined;
    layer = L.tileLayer(tilejson.tiles[0], {
      minZoom: 0, maxZoom: Math.max(22, tilejson.maxzoom || 0), minNativeZoom: tilejson.minzoom,
      maxNativeZoom: tilejson.maxzoom, bounds: latLngBox, tms: tilejson.scheme === "tms",
      attribution: escapeHtml(tilejson.attribution || ""), // Leaflet shows attributions as HTML
    });
  } else {
    layer = L.imageOverlay(imageUrl, L.latLngBounds([box[1], box[0]], [box[3], box[2]]),
                           { className: "gw-overlay", alt: "the job's image on its bounds" });
    layer.on("load", () => { layer.getElement().dataset.loaded = "true"; });
  }
  layer.addTo(map);
  if (box) map.fitBounds(L.latLngBounds([box[1], box[0]], [box[3], box[2]]), { padding: [16, 16] });
  else map.setView([0, 0], 1);
  element.dataset.bounds = JSON.stringify(box || null);
  element.dataset.layer = tilejson ? "tiles" : "image";
  const handle = { map, layer, bounds: box, destroy: () => map.remove() };
  window.geoworkerMap = handle; // for tests and the curious: the live Leaflet objects
  return handle;
}

function escapeHtml(text) {
  const span = document.createElement("span");
  span.textContent = String(text);
  return span.innerHTML;
}
