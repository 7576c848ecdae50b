/* The atlas glue: loads data files (<script> tags calling ATLAS.*, no fetch: file:// allows none),
   builds DOM from untrusted strings with textContent / setAttribute only, and hands images to
   OpenSeadragon (zoom, pan, tiles, overlays are the library's). */
"use strict";

const ATLAS = (() => {
  const waiting = {};  // "kind:arg" -> [resolve, ...]

  function deliver(name, value) {
    (waiting[name] || []).forEach((resolve) => resolve(value));
    delete waiting[name];
  }

  // One data file, as a promise of the value its callback passes.
  function load(src, name) {
    return new Promise((resolve, reject) => {
      (waiting[name] = waiting[name] || []).push(resolve);
      const script = document.createElement("script");
      script.setAttribute("src", src);
      script.onerror = () => reject(new Error("cannot load " + src));
      document.head.appendChild(script);
    });
  }

  // An element with text (never parsed as HTML) and fixed attributes.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else if (key === "class") node.className = value;
      else node.setAttribute(key, String(value));
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.appendChild(typeof child === "string" || typeof child === "number" ? document.createTextNode(String(child)) : child);
    }
    return node;
  }

  function fmt(value) {
    if (value === null || value === undefined) return "";
    if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toPrecision(4).replace(/\.?0+$/, "");
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }

  function param(name) {
    return new URLSearchParams(window.location.search).get(name);
  }

  // Only our own relative paths reach src attributes: no scheme (no ':' before the first '/'), no '..'.
  function sitePath(path) {
    const text = String(path || "");
    const ok = /^[A-Za-z0-9_][A-Za-z0-9_.\/:-]*$/.test(text) && !text.includes("..") && !text.split("/")[0].includes(":");
    return ok ? text : "";
  }

  // The DZI descriptor of the contract as an inline tile source: no .dzi request.
  function tileSource(desc) {
    return {
      Image: {
        xmlns: "http://schemas.microsoft.com/deepzoom/2008",
        Url: sitePath(desc.url), Format: desc.format || "jpg",
        Overlap: String(desc.overlap), TileSize: String(desc.tile_size),
        Size: { Width: String(desc.width), Height: String(desc.height) },
      },
    };
  }

  function viewer(id, desc, extra) {
    return OpenSeadragon(Object.assign({
      id: id, prefixUrl: "assets/openseadragon/images/", tileSources: tileSource(desc),
      showNavigator: false, maxZoomPixelRatio: 4, visibilityRatio: 0.5, crossOriginPolicy: false,
      // file:// tiles count as cross-origin: WebGL refuses them as textures, a 2D canvas draws them
      drawer: "canvas",
    }, extra || {}));
  }

  // An OpenSeadragon overlay over image-pixel rect (x, y, w, h) of the viewer's first image.
  function addBox(osd, x, y, w, h, element) {
    const item = osd.world.getItemAt(0);
    osd.addOverlay({ element: element, location: item.imageToViewportRectangle(x, y, w, h) });
    return element;
  }

  // A click on an overlay element, through OpenSeadragon's own tracker (the viewer captures the
  // pointer, so a DOM click listener would never fire); not a click-to-zoom.
  function onClick(element, handler) {
    return new OpenSeadragon.MouseTracker({
      element: element,
      clickHandler: (event) => { if (event.quick) handler(); },
      preProcessEventHandler: (info) => { if (info.eventType === "click" || info.eventType === "pointerdown") info.stopPropagation = true; },
    });
  }

  return {
    el, fmt, onClick, param, sitePath, tileSource, viewer, addBox, load,
    run: (value) => deliver("run", value),
    page: (key, page, items) => deliver("page:" + key + ":" + page, items),
    search: (n, rows) => deliver("search:" + n, rows),
    image: (value) => deliver("image", value),
    bench: (value) => deliver("bench", value),
  };
})();
