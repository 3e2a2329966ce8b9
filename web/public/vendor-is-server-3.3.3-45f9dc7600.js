/* lit-html@3.3.3 is-server.js, vendored by web/tools/vendor.mjs (imports renamed) */
/**
 * @license
 * Copyright 2022 Google LLC
 * SPDX-License-Identifier: BSD-3-Clause
 */
const o=!1;export{o as isServer};
