// The official OpenAI and Anthropic Node SDKs against llmux: streaming chat and tools, error
// classes, the Anthropic Messages API and the OpenAI Responses API.
// Starts llmux-mock and llmux (the real binaries) on free ports.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const target = process.env.CARGO_TARGET_DIR ?? join(root, 'target');
const llmuxBin = process.env.LLMUX_BIN ?? join(target, 'debug', 'llmux');
const mockBin = process.env.LLMUX_MOCK_BIN ?? join(target, 'debug', 'llmux-mock');
const MASTER_KEY = 'sk-node-test';

function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
    srv.on('error', fail);
  });
}

async function waitReady(url) {
  const deadline = Date.now() + 20000;
  while (Date.now() < deadline) {
    try {
      const r = await fetch(url);
      if (r.status === 200) return;
    } catch {}
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${url} did not become ready`);
}

let processes = [];
let client;
let anthropic;

before(async () => {
  const mockPort = await freePort();
  const port = await freePort();
  processes.push(spawn(mockBin, ['--port', String(mockPort)], { stdio: 'ignore' }));
  const upstream = `http://127.0.0.1:${mockPort}/v1`;
  const config = {
    model_list: [
      { model_name: 'gpt-test', litellm_params: { model: 'openai/mock-gpt', api_base: upstream, api_key: 'sk-up' } },
      { model_name: 'demo', litellm_params: { model: 'mock/demo' } },
      { model_name: 'claude-test', litellm_params: { model: 'anthropic/claude-mock', api_base: upstream, api_key: 'sk-ant' } },
    ],
    general_settings: { master_key: MASTER_KEY },
    router_settings: { num_retries: 0, disable_cooldowns: true },
  };
  const dir = mkdtempSync(join(tmpdir(), 'llmux-node-'));
  config.llmux_settings = { database_path: join(dir, 'llmux.db') };
  const path = join(dir, 'config.yaml');
  writeFileSync(path, JSON.stringify(config));
  processes.push(spawn(llmuxBin, ['serve', '--host', '127.0.0.1', '--port', String(port), '--config', path], { stdio: 'ignore' }));
  await waitReady(`http://127.0.0.1:${mockPort}/v1/models`);
  await waitReady(`http://127.0.0.1:${port}/health/readiness`);
  client = new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: MASTER_KEY, maxRetries: 0 });
  anthropic = new Anthropic({ baseURL: `http://127.0.0.1:${port}`, apiKey: MASTER_KEY, maxRetries: 0 });
});

after(() => {
  for (const p of processes) p.kill('SIGTERM');
});

const messages = [{ role: 'user', content: 'Say something' }];
const tools = [{
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Weather for a city',
    parameters: { type: 'object', properties: { location: { type: 'string' } }, required: ['location'] },
  },
}];

test('streaming chat yields every chunk in order, with usage', async () => {
  const stream = await client.chat.completions.create({
    model: 'gpt-test', messages, stream: true, stream_options: { include_usage: true },
    mock_options: { chunks: 300 },
  });
  let text = '';
  let usage = null;
  let finish = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices) {
      text += choice.delta.content ?? '';
      finish = choice.finish_reason ?? finish;
    }
  }
  assert.equal(text, Array.from({ length: 300 }, (_, i) => `tok${i} `).join(''));
  assert.equal(finish, 'stop');
  assert.equal(usage.completion_tokens, 300);
});

test('streaming chat from the in-process demo model', async () => {
  const stream = await client.chat.completions.create({ model: 'demo', messages: [{ role: 'user', content: 'ping' }], stream: true });
  let text = '';
  for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
  assert.match(text, /You said: ping$/);
});

test('tool calls, JSON and streamed', async () => {
  const r = await client.chat.completions.create({ model: 'gpt-test', messages, tools, tool_choice: 'required' });
  assert.equal(r.choices[0].finish_reason, 'tool_calls');
  assert.equal(r.choices[0].message.tool_calls[0].function.name, 'get_weather');
  assert.deepEqual(JSON.parse(r.choices[0].message.tool_calls[0].function.arguments), { location: 'Paris' });

  const stream = await client.chat.completions.create({ model: 'gpt-test', messages, tools, tool_choice: 'required', stream: true });
  let name = null;
  let args = '';
  let finish = null;
  for await (const chunk of stream) {
    for (const choice of chunk.choices) {
      for (const tc of choice.delta.tool_calls ?? []) {
        name = tc.function?.name ?? name;
        args += tc.function?.arguments ?? '';
      }
      finish = choice.finish_reason ?? finish;
    }
  }
  assert.equal(name, 'get_weather');
  assert.deepEqual(JSON.parse(args), { location: 'Paris' });
  assert.equal(finish, 'tool_calls');
});

test('the stream helper assembles the final message with tool calls', async () => {
  const runner = client.chat.completions.stream({ model: 'gpt-test', messages, tools, tool_choice: 'required' });
  const final = await runner.finalChatCompletion();
  assert.equal(final.choices[0].message.tool_calls[0].function.name, 'get_weather');
});

test('errors map to the SDK error classes', async () => {
  await assert.rejects(client.chat.completions.create({ model: 'nope', messages }), OpenAI.NotFoundError);
  await assert.rejects(
    client.chat.completions.create({ model: 'gpt-test', messages, mock_options: { status: 429 } }),
    OpenAI.RateLimitError,
  );
  const bad = new OpenAI({ baseURL: client.baseURL, apiKey: 'sk-wrong', maxRetries: 0 });
  await assert.rejects(bad.chat.completions.create({ model: 'gpt-test', messages }), OpenAI.AuthenticationError);
});

test('an error event inside a stream rejects the iteration', async () => {
  const stream = await client.chat.completions.create({
    model: 'gpt-test', messages, stream: true, mock_options: { error_event_after: 2 },
  });
  let text = '';
  await assert.rejects(async () => {
    for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? '';
  }, /mock error inside the stream/);
  assert.equal(text, 'tok0 tok1 ');
});

const TEXT = Array.from({ length: 20 }, (_, i) => `tok${i} `).join('');
const weather = { name: 'get_weather', description: 'Weather', input_schema: { type: 'object', properties: { location: { type: 'string' } } } };

for (const model of ['gpt-test', 'claude-test']) {
  test(`the Anthropic SDK's messages, streamed and with tools (${model})`, async () => {
    const m = await anthropic.messages.create({ model, max_tokens: 256, messages: [{ role: 'user', content: 'Hello' }] });
    assert.equal(m.content[0].text, TEXT);
    assert.equal(m.stop_reason, 'end_turn');

    const stream = anthropic.messages.stream({ model, max_tokens: 256, messages: [{ role: 'user', content: 'Hello' }] });
    let text = '';
    stream.on('text', (t) => { text += t; });
    const final = await stream.finalMessage();
    assert.equal(text, TEXT);
    assert.equal(final.content[0].text, TEXT);

    const tools = await anthropic.messages.stream({ model, max_tokens: 256, tools: [weather], tool_choice: { type: 'any' },
      messages: [{ role: 'user', content: 'Weather?' }] }).finalMessage();
    const call = tools.content.find((b) => b.type === 'tool_use');
    assert.deepEqual(call.input, { location: 'Paris' });
    assert.equal(tools.stop_reason, 'tool_use');

    await assert.rejects(
      anthropic.messages.create({ model: 'no-such-model', max_tokens: 8, messages: [{ role: 'user', content: 'x' }] }),
      Anthropic.NotFoundError,
    );
  });

  test(`the OpenAI SDK's Responses API, streamed, with tools and a chain (${model})`, async () => {
    const r = await client.responses.create({ model, input: 'Hello', instructions: 'Be brief.' });
    assert.equal(r.output_text, TEXT);

    const stream = client.responses.stream({ model, input: 'Hello' });
    let text = '';
    stream.on('response.output_text.delta', (e) => { text += e.delta; });
    const final = await stream.finalResponse();
    assert.equal(text, TEXT);
    assert.equal(final.output_text, TEXT);

    const called = await client.responses.create({ model, input: 'Weather?', tool_choice: 'required',
      tools: [{ type: 'function', name: 'get_weather', parameters: weather.input_schema }] });
    const call = called.output.find((o) => o.type === 'function_call');
    assert.deepEqual(JSON.parse(call.arguments), { location: 'Paris' });
    const next = await client.responses.create({ model, previous_response_id: called.id,
      input: [{ type: 'function_call_output', call_id: call.call_id, output: 'Sunny' }] });
    assert.equal(next.output_text, TEXT);
    const stored = await client.responses.retrieve(called.id);
    assert.equal(stored.id, called.id);
  });
}
