/* lit@3.3.3 index.js, vendored by web/tools/vendor.mjs (imports renamed) */
import"./vendor-reactive-element-2.1.2-53ff04d5e8.js";import"./vendor-lit-html-3.3.3-7a38c8764c.js";export*from"./vendor-lit-element-4.2.2-0a0e10e3a0.js";export*from"./vendor-is-server-3.3.3-45f9dc7600.js";
