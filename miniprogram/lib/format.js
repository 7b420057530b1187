// Small formatting helpers shared by the pages.
'use strict';

function pad(n) {
  return n < 10 ? '0' + n : String(n);
}

/** "2026-01-31 14:05:09" in the phone's local time, from an ISO timestamp. */
function formatTime(iso) {
  const d = new Date(iso);
  if (isNaN(d.getTime())) return '';
  return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate()) + ' ' +
    pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
}

/**
 * The scene from the page's query. WeChat passes the `scene` of a getwxacodeunlimit code
 * URL-encoded in `query.scene`; a malformed encoding yields ''.
 */
function sceneFromQuery(query) {
  const raw = query && query.scene;
  if (!raw) return '';
  try {
    return decodeURIComponent(raw);
  } catch (e) {
    return '';
  }
}

module.exports = {formatTime, sceneFromQuery};
