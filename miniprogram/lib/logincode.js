// Typed login codes: what a web page open on the phone itself shows instead of a code to scan. The
// user types it on the home page (输入网页上的登录码); the login page then enters it like a scan. 8
// characters from the service's alphabet without look-alikes (shared/logincode.py): no 0/O, 1/I/L.
'use strict';

const ALPHABET = '23456789ABCDEFGHJKMNPQRSTUVWXYZ';
const LENGTH = 8;

/** The code as typed (any case, spaces or dashes between groups) in the form the gateway takes, or ''. */
function normalizeLoginCode(text) {
  const code = String(text || '').replace(/[\s-]/g, '').toUpperCase();
  if (code.length !== LENGTH) return '';
  for (const ch of code) if (ALPHABET.indexOf(ch) < 0) return '';
  return code;
}

/** What the input shows while typing: letters and digits only, upper case, a dash after the fourth. */
function formatTyping(text) {
  const chars = String(text || '').replace(/[^0-9A-Za-z]/g, '').toUpperCase().slice(0, LENGTH);
  return chars.length > 4 ? chars.slice(0, 4) + '-' + chars.slice(4) : chars;
}

/** Why what was typed cannot be a login code ('' when it can). */
function loginCodeProblem(text) {
  const chars = String(text || '').replace(/[\s-]/g, '').toUpperCase();
  if (!chars) return '请输入网页上显示的 8 位登录码';
  if (/[01IOL]/.test(chars)) return '登录码里没有 0、1、I、O、L 这几个字符，请对照网页重新输入';
  if (chars.length !== LENGTH || !normalizeLoginCode(chars)) return '登录码是 8 位字母和数字，请对照网页重新输入';
  return '';
}

/** The text for an error of a typed code ('' when the scan messages fit as they are). */
const CODE_MESSAGES = {
  login_code_invalid: '登录码不正确，请对照网页上的登录码重新输入',
  scene_not_found: '登录码不正确，请对照网页上的登录码重新输入',
  scene_expired: '登录码已过期，请在网页上刷新后输入新的登录码',
  scene_cancelled: '这次登录已取消，请在网页上刷新后输入新的登录码',
  already_scanned: '这个登录码已经用过了，请在网页上刷新后输入新的登录码',
  already_confirmed: '这个登录码已经用过了，请在网页上刷新后输入新的登录码',
  rate_limited: '登录码输入次数太多，请稍后再试；也可以在网页上保存二维码，用微信扫一扫从相册识别'
};

function loginCodeMessage(err) {
  const code = typeof err === 'string' ? err : err && err.code;
  return CODE_MESSAGES[code] || '';
}

module.exports = {ALPHABET, LENGTH, normalizeLoginCode, formatTyping, loginCodeProblem, loginCodeMessage};
