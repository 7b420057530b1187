// Pure helpers: no server needed.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const {formatTime, sceneFromQuery} = require('../lib/format');
const {messageFor, retryable, ApiError} = require('../lib/api');

test('the scene is URL-decoded from the page query', () => {
  assert.equal(sceneFromQuery({scene: 'abc%2Ddef_1'}), 'abc-def_1');
  assert.equal(sceneFromQuery({scene: 'plain-Scene_09'}), 'plain-Scene_09');
  assert.equal(sceneFromQuery({}), '');
  assert.equal(sceneFromQuery(undefined), '');
  assert.equal(sceneFromQuery({scene: '%E0%A4%A'}), ''); // malformed encoding
});

test('request times read as local date and time', () => {
  assert.match(formatTime('2026-01-31T14:05:09Z'), /^2026-01-(31|30|01) \d\d:05:09$|^2026-0[12]-\d\d \d\d:\d\d:09$/);
  assert.equal(formatTime('not a time'), '');
});

test('errors read as Chinese text; only network and server trouble is retryable', () => {
  assert.equal(messageFor(new ApiError('already_scanned', 'x', 409)), '该二维码已被其他微信扫描');
  assert.equal(messageFor(new ApiError('network')), '网络错误，请检查网络后重试');
  assert.equal(messageFor(new ApiError('who_knows', 'x', 503)), '服务暂时不可用，请稍后重试');
  assert.equal(retryable(new ApiError('network')), true);
  assert.equal(retryable(new ApiError('rpc_timeout', 'x', 503)), true);
  assert.equal(retryable(new ApiError('scene_expired', 'x', 410)), false);
});
