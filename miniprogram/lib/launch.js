// How the login page was opened: WeChat's launch scene, which the page sends with its scan so that the
// gateway can tell a code scanned off a screen (1047) from one recognised in a chat image or picked
// from the album (1048/1049: a relayed code, warned about) and from share cards and other
// mini-programs (refused). Security review M4.
'use strict';

/** 扫描小程序码: the camera scanned a code (WeChat's scanner, or our home page's camera-only 扫一扫). */
const CAMERA_SCENE = 1047;

// The scene our own home page's 扫一扫 read last. It lives in this module (one per mini-program run):
// nothing outside the mini-program can set it, unlike a page query, which a share card or another
// mini-program chooses.
let cameraScene = '';

/** The home page's camera scanner read `scene`: the login page it opens reports a camera scan. */
function noteCameraScan(scene) {
  cameraScene = scene || '';
}

/**
 * The launch scene to report for a login page opened for `scene`: 1047 when our own camera scanner
 * just read it (said once), else how WeChat entered the mini-program (wx.getEnterOptionsSync, which a
 * warm start updates; wx.getLaunchOptionsSync on an older runtime); null when the runtime says nothing.
 */
function launchScene(wx, scene) {
  if (scene && scene === cameraScene) {
    cameraScene = '';
    return CAMERA_SCENE;
  }
  let options = null;
  try {
    if (typeof wx.getEnterOptionsSync === 'function') options = wx.getEnterOptionsSync();
    else if (typeof wx.getLaunchOptionsSync === 'function') options = wx.getLaunchOptionsSync();
  } catch (e) {
    options = null;
  }
  const value = Number(options && options.scene);
  return Number.isInteger(value) && value > 0 ? value : null;
}

module.exports = {CAMERA_SCENE, launchScene, noteCameraScan};
