// tests/integration/http-client.cjs - the HTTP API's client side, driven by test-http.sh: OpenAI's own
// npm client (the package directory is argv[2]) and raw fetch requests against a running
// pi-coordinator. One part per run (argv[3]); prints TAP lines "ok N - ..." / "not ok N - ...".
//   basic URL                chat, the same streamed, completions, models, tokenize/detokenize, logprobs, stop
//   malformed URL            a list of bad requests: each a 4xx JSON error; the server stays healthy
//   auth URL KEY             401 without the key, answers with it
//   concurrency URL N SECS   N clients for SECS seconds: each greedy answer equals the same request alone
//   disconnect URL           a client that goes away mid-stream frees its slot
//   kill URL PIDFILE         kill -9 of a worker during 16 streams: each ends with an error event, then
//                            the next requests succeed
'use strict';
const path = require('path');
const OpenAI = require(path.join(process.argv[2], 'node_modules', 'openai'));
const part = process.argv[3];
const url = process.argv[4];

let n = 0, fails = 0;
function ok(cond, what) {
    n++;
    if (cond) console.log(`ok ${n} - ${what}`);
    else { fails++; console.log(`not ok ${n} - ${what}`); }
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function client(key) {
    return new OpenAI({ baseURL: url + '/v1', apiKey: key || 'none', maxRetries: 0, timeout: 120000 });
}

async function metric(name) {
    const t = await (await fetch(url + '/metrics')).text();
    const m = t.match(new RegExp('^' + name.replace(/[{}"=]/g, (c) => '\\' + c) + ' ([0-9.e+-]+)$', 'm'));
    return m ? Number(m[1]) : NaN;
}

async function streamText(c, body) {
    const s = await c.chat.completions.create({ ...body, stream: true });
    let text = '', finish = null, chunks = 0;
    for await (const ch of s) {
        chunks++;
        if (ch.choices.length && ch.choices[0].delta && ch.choices[0].delta.content) text += ch.choices[0].delta.content;
        if (ch.choices.length && ch.choices[0].finish_reason) finish = ch.choices[0].finish_reason;
    }
    return { text, finish, chunks };
}

const prompts = [
    'Tell me about the jury.', 'Once upon a time', 'The weather today is', 'Write a short poem about rivers.',
    'What is two plus two?', 'List three colours.', 'The old man said', 'Describe a city at night.',
];

async function basic() {
    const c = client();
    const body = { model: 'demo', messages: [{ role: 'system', content: 'Be brief.' }, { role: 'user', content: prompts[0] }],
        temperature: 0, max_tokens: 24 };
    const r = await c.chat.completions.create(body);
    const text = r.choices[0].message.content;
    ok(r.object === 'chat.completion' && typeof text === 'string' && text.length > 0, `chat completion answers (${JSON.stringify(text)})`);
    ok(r.usage && r.usage.completion_tokens > 0 && r.usage.total_tokens === r.usage.prompt_tokens + r.usage.completion_tokens,
        `usage counts (${JSON.stringify(r.usage)})`);
    ok(['stop', 'length'].includes(r.choices[0].finish_reason), `finish_reason ${r.choices[0].finish_reason}`);
    const s = await streamText(c, body);
    ok(s.text === text, `streamed text equals the whole answer (${s.chunks} chunks)`);
    ok(s.finish === r.choices[0].finish_reason, `streamed finish_reason ${s.finish}`);
    const again = await c.chat.completions.create(body);
    ok(again.choices[0].message.content === text, 'the same greedy request again gives the same text (prefix reuse)');
    const models = await c.models.list();
    ok(models.data.length === 1 && typeof models.data[0].id === 'string', `models list (${models.data.map((m) => m.id)})`);
    const cmp = await c.completions.create({ model: 'demo', prompt: prompts[1], max_tokens: 12, temperature: 0 });
    ok(cmp.object === 'text_completion' && cmp.choices[0].text.length > 0, `text completion (${JSON.stringify(cmp.choices[0].text)})`);
    const lp = await c.chat.completions.create({ ...body, max_tokens: 4, logprobs: true, top_logprobs: 3 });
    const content = lp.choices[0].logprobs && lp.choices[0].logprobs.content;
    ok(Array.isArray(content) && content.length === lp.usage.completion_tokens &&
        content.every((e) => e.logprob <= 0 && e.top_logprobs.length === 3 && e.top_logprobs[0].logprob >= e.top_logprobs[2].logprob),
    `logprobs: one entry per token with 3 alternatives`);
    // greedy: the chosen token is the most likely one
    ok(content.every((e) => Math.abs(e.logprob - e.top_logprobs[0].logprob) < 1e-5), 'greedy picks the top logprob');
    // a stop string taken from the greedy answer ends it before that string
    const words = text.trim().split(/\s+/);
    if (words.length >= 3) {
        const stop = ' ' + words[2];
        const st = await c.chat.completions.create({ ...body, stop: [stop] });
        const want = text.slice(0, text.indexOf(stop));
        ok(st.choices[0].message.content === want && st.choices[0].finish_reason === 'stop',
            `stop ${JSON.stringify(stop)}: ${JSON.stringify(st.choices[0].message.content)}`);
    } else ok(true, 'stop string: answer too short to pick one (skipped)');
    const tk = await (await fetch(url + '/tokenize', { method: 'POST', body: JSON.stringify({ content: 'Hello world' }) })).json();
    ok(Array.isArray(tk.tokens) && tk.tokens.length > 1, `tokenize (${tk.tokens})`);
    const dt = await (await fetch(url + '/detokenize', { method: 'POST',
        body: JSON.stringify({ tokens: tk.tokens.slice(1) }) })).json();
    ok(dt.content === 'Hello world' || dt.content === ' Hello world', `detokenize gives the text back (${JSON.stringify(dt.content)})`);
    const h = await fetch(url + '/health');
    ok(h.status === 200, 'health 200');
    const gen = await metric('pinfer_generated_tokens_total');
    ok(gen > 0, `metrics: pinfer_generated_tokens_total ${gen}`);
}

async function malformed() {
    const chat = '/v1/chat/completions';
    const good = { model: 'demo', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 };
    const j = (o) => JSON.stringify(o);
    const cases = [
        ['not JSON', chat, 'POST', '{"model":'],
        ['JSON array', chat, 'POST', '[]'],
        ['no messages', chat, 'POST', j({ model: 'demo' })],
        ['empty messages', chat, 'POST', j({ ...good, messages: [] })],
        ['unknown role', chat, 'POST', j({ ...good, messages: [{ role: 'wizard', content: 'x' }] })],
        ['content a number', chat, 'POST', j({ ...good, messages: [{ role: 'user', content: 5 }] })],
        ['message without content', chat, 'POST', j({ ...good, messages: [{ role: 'user' }] })],
        ['temperature a string', chat, 'POST', j({ ...good, temperature: 'hot' })],
        ['temperature out of range', chat, 'POST', j({ ...good, temperature: 7 })],
        ['top_p 0', chat, 'POST', j({ ...good, top_p: 0 })],
        ['max_tokens negative', chat, 'POST', j({ ...good, max_tokens: -3 })],
        ['max_tokens fractional', chat, 'POST', j({ ...good, max_tokens: 1.5 })],
        ['n = 2', chat, 'POST', j({ ...good, n: 2 })],
        ['stream not a bool', chat, 'POST', j({ ...good, stream: 'yes' })],
        ['stop a number', chat, 'POST', j({ ...good, stop: 3 })],
        ['logit_bias key not a token', chat, 'POST', j({ ...good, logit_bias: { abc: 1 } })],
        ['logit_bias out of range', chat, 'POST', j({ ...good, logit_bias: { 5: 1000 } })],
        ['logit_bias token past the vocabulary', chat, 'POST', j({ ...good, logit_bias: { 99999999: 1 } })],
        ['top_logprobs 50', chat, 'POST', j({ ...good, logprobs: true, top_logprobs: 50 })],
        ['tools', chat, 'POST', j({ ...good, tools: [{ type: 'function', function: { name: 'f' } }] })],
        ['bad UTF-8', chat, 'POST', Buffer.concat([Buffer.from('{"model":"demo","messages":[{"role":"user","content":"'),
            Buffer.from([0xff, 0xfe]), Buffer.from('"}]}')])],
        ['prompt longer than the context', chat, 'POST', j({ ...good, messages: [{ role: 'user', content: 'word '.repeat(20000) }] })],
        ['max_tokens past the context', chat, 'POST', j({ ...good, max_tokens: 1000000 })],
        ['completion without prompt', '/v1/completions', 'POST', j({ model: 'demo' })],
        ['completion echo', '/v1/completions', 'POST', j({ model: 'demo', prompt: 'x', echo: true })],
        ['body too large', chat, 'POST', 'x'.repeat(5 << 20)],
        ['unknown route', '/v1/nothing', 'POST', j(good)],
        ['wrong method', chat, 'GET', null],
        ['detokenize bad ids', '/detokenize', 'POST', j({ tokens: [-1] })],
        ['tokenize without content', '/tokenize', 'POST', j({})],
    ];
    for (const [what, route, method, body] of cases) {
        let status = 0, err = null;
        try {
            const r = await fetch(url + route, { method, body: body === null ? undefined : body,
                headers: { 'Content-Type': 'application/json' } });
            status = r.status;
            const t = await r.text();
            try { err = JSON.parse(t).error; } catch (e) { err = null; }
        } catch (e) {
            err = null;
            status = -1;
        }
        ok(status >= 400 && status < 500 && err && typeof err.message === 'string' && 'type' in err && 'param' in err && 'code' in err,
            `${what}: ${status} ${err ? JSON.stringify(err.message) : '(no OpenAI error body)'}`);
    }
    const h = await fetch(url + '/health');
    ok(h.status === 200, 'still healthy after the bad requests');
    const r = await client().chat.completions.create({ ...good, temperature: 0 });
    ok(r.choices[0].message.content.length >= 0 && r.choices[0].finish_reason, 'and still answers');
}

async function auth() {
    const key = process.argv[5];
    let status = 0;
    try { await client('wrong').chat.completions.create({ model: 'demo', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }); }
    catch (e) { status = e.status; }
    ok(status === 401, `a wrong key: 401 (${status})`);
    const r = await fetch(url + '/v1/models');
    ok(r.status === 401, `no key: 401 (${r.status})`);
    const a = await client(key).chat.completions.create({ model: 'demo', messages: [{ role: 'user', content: 'hi' }],
        max_tokens: 4, temperature: 0 });
    ok(a.choices[0].finish_reason, 'the right key: answered');
    const s = await streamText(client(key), { model: 'demo', messages: [{ role: 'user', content: 'hi' }], max_tokens: 4, temperature: 0 });
    ok(s.text === a.choices[0].message.content, 'the right key, streamed: same text');
    ok((await fetch(url + '/health')).status === 200, '/health needs no key');
}

function reqFor(i) {
    return { model: 'demo', messages: [{ role: 'user', content: prompts[i % prompts.length] }], temperature: 0,
        max_tokens: 8 + (i * 7) % 25 };
}

async function concurrency() {
    const clients = Number(process.argv[5]), secs = Number(process.argv[6]);
    const c = client();
    const variants = 16, ref = [];
    for (let i = 0; i < variants; i++) ref.push((await c.chat.completions.create(reqFor(i))).choices[0].message.content);
    ok(true, `${variants} references served alone`);
    const until = Date.now() + secs * 1000;
    let done = 0, bad = 0, errors = 0, streamed = 0;
    const first = [];
    async function worker(w) {
        let k = w;
        while (Date.now() < until) {
            const i = k++ % variants;
            try {
                let text;
                if ((w + k) % 3 === 0) { text = (await streamText(c, reqFor(i))).text; streamed++; }
                else text = (await c.chat.completions.create(reqFor(i))).choices[0].message.content;
                if (text !== ref[i]) { bad++; if (first.length < 3) first.push([i, text, ref[i]]); }
                done++;
            } catch (e) {
                errors++;
                if (first.length < 3) first.push(['error', String(e)]);
                await sleep(50);
            }
        }
    }
    await Promise.all(Array.from({ length: clients }, (_, w) => worker(w)));
    ok(done > clients && errors === 0, `${clients} clients for ${secs} s: ${done} answers (${streamed} streamed), ${errors} errors`);
    ok(bad === 0, `every answer equals the same request alone (${bad} differ) ${first.length ? JSON.stringify(first) : ''}`);
    const steps = await metric('pinfer_steps_total'), toks = await metric('pinfer_step_tokens_total');
    ok(toks > steps, `steps carried more than one token on average (${toks} tokens in ${steps} steps)`);
}

async function disconnect() {
    const before = await metric('pinfer_requests_total{outcome="cancelled"}');
    const ac = new AbortController();
    const r = await fetch(url + '/v1/chat/completions', { method: 'POST', signal: ac.signal,
        body: JSON.stringify({ model: 'demo', messages: [{ role: 'user', content: 'Tell me a long story.' }],
            stream: true, ignore_eos: true }) });
    const rd = r.body.getReader();
    const first = await rd.read();
    ok(!first.done && r.status === 200, 'a stream began');
    ac.abort();
    let running = 1, cancelled = before;
    for (let i = 0; i < 100 && (running !== 0 || cancelled <= before); i++) {
        await sleep(100);
        running = await metric('pinfer_requests_running');
        cancelled = await metric('pinfer_requests_total{outcome="cancelled"}');
    }
    ok(running === 0 && cancelled === before + 1, `its slot is free again (running ${running}, cancelled ${before} -> ${cancelled})`);
}

async function kill() {
    const fs = require('fs');
    const pid = Number(fs.readFileSync(process.argv[5], 'utf8').trim());
    const streams = 16, body = (i) => JSON.stringify({ model: 'demo', messages: [{ role: 'user', content: prompts[i % 8] }],
        stream: true, ignore_eos: true });
    let started = 0, killed = false;
    async function one(i) {
        const r = await fetch(url + '/v1/chat/completions', { method: 'POST', body: body(i) });
        if (r.status !== 200) return { status: r.status, error: false, done: false };
        const rd = r.body.getReader(), dec = new TextDecoder();
        let all = '', counted = false;
        for (;;) {
            const { done, value } = await rd.read();
            if (done) break;
            all += dec.decode(value, { stream: true });
            // begun: a token's text arrived (the first event, the role, comes before any token)
            if (!counted && /"content":"[^"]/.test(all)) { counted = true; started++; }
        }
        return { status: 200, error: /data: \{"error"/.test(all), done: all.trimEnd().endsWith('data: [DONE]') };
    }
    const all = Array.from({ length: streams }, (_, i) => one(i));
    for (let i = 0; i < 600 && started < streams; i++) await sleep(50);
    ok(started === streams, `${started} of ${streams} streams began`);
    process.kill(pid, 'SIGKILL');
    killed = true;
    const res = await Promise.all(all);
    const withErr = res.filter((x) => x.status === 200 && x.error && x.done).length;
    ok(killed && withErr === streams, `each stream ended with an error event and [DONE] (${withErr} of ${streams})`);
    let h = 0;
    for (let i = 0; i < 300 && h !== 200; i++) { await sleep(100); h = (await fetch(url + '/health')).status; }
    ok(h === 200, 'healthy again after the restart');
    const a = await client().chat.completions.create({ model: 'demo', messages: [{ role: 'user', content: 'hi' }], max_tokens: 4, temperature: 0 });
    ok(a.choices[0].finish_reason, 'the next request succeeds');
}

(async () => {
    const parts = { basic, malformed, auth, concurrency, disconnect, kill };
    try { await parts[part](); } catch (e) { ok(false, `${part}: ${e && e.stack ? e.stack : e}`); }
    console.log(`1..${n}`);
    process.exit(fails ? 1 : 0);
})();
