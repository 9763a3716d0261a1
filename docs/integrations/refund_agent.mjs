// A refund agent on the official MCP TypeScript SDK (@modelcontextprotocol/sdk), serving the
// shadow sidecar's agent contract (docs/integrations/typescript.md).
//
//   npm install @modelcontextprotocol/sdk
//   node refund_agent.mjs                      # http://127.0.0.1:9000 (PORT, HOST to change)
//   shadow run --config policy.yaml --agent http://127.0.0.1:9000/decide
//
// The sidecar POSTs {event_id, task_type, payload, shadow, tools_url?} and reads back
// {decision, agent_version, usage?}. For each case this server opens one MCP session on the
// case's tools_url (the sidecar's tool gateway: reads reach the real tools, writes are
// captured as the case's actions and never executed), lets the agent decide with it, closes
// the session before answering, and answers the decision. Anything that goes wrong is a
// one-line error answer (500; 504 past the deadline), which the sidecar records against
// this agent version.
import http from "node:http";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const AGENT_VERSION = "refund-agent@7";
const DEADLINE_MS = 8000; // below the sidecar's agent timeout (10 s by default)
const HOST = process.env.HOST ?? "127.0.0.1";
const PORT = Number(process.env.PORT ?? 9000);

// -- your agent ------------------------------------------------------------------------------
// Decide one case with its tools. A rule stands in for your model loop here; return the
// decision, and the usage your model reported ({input_tokens, output_tokens, cost_usd}) when
// there is one. The writes you make through `tools` are the case's actions: do not list them.
async function decideCase(request, tools) {
  const order = await callTool(tools, "get_order", { order_id: request.payload.order_id });
  if (order.status !== "delivered") {
    return { decision: { action: "deny" } };
  }
  await callTool(tools, "issue_refund", { order_id: order.order_id, amount: order.amount });
  return { decision: { action: "approve" } };
}

// -- the contract ----------------------------------------------------------------------------

class Deadline extends Error {}

async function callTool(tools, name, args) {
  const { signal, remaining } = tools.deadline;
  // No retry: a write sent twice is two writes (the gateway attaches an identical retry to
  // the first anyway, but only you know whether you meant it).
  const result = await tools.client.callTool({ name, arguments: args }, undefined, {
    signal,
    timeout: remaining(),
  });
  if (result.isError) {
    const text = result.content?.map((block) => block.text ?? "").join(" ") ?? "";
    throw new Error(`${name} failed: ${text}`);
  }
  return result.structuredContent;
}

// One MCP session for the case, closed before the answer whatever happens. Closing a session
// the sidecar no longer knows (404) is not an error: there is nothing left to end.
async function withTools(toolsUrl, deadline, work) {
  if (!toolsUrl) {
    return work(null);
  }
  const transport = new StreamableHTTPClientTransport(new URL(toolsUrl));
  const client = new Client({ name: "refund-agent", version: AGENT_VERSION });
  await client.connect(transport, { signal: deadline.signal, timeout: deadline.remaining() });
  try {
    return await work({ client, deadline });
  } finally {
    try {
      await transport.terminateSession();
    } catch {
      // 404 (or the sidecar gone): the case's decision stands
    }
    await client.close();
  }
}

async function answer(request) {
  const controller = new AbortController();
  const end = Date.now() + DEADLINE_MS;
  const deadline = {
    signal: controller.signal,
    remaining: () => Math.max(100, end - Date.now()),
  };
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => {
      controller.abort();
      reject(new Deadline(`deadline: no decision within ${DEADLINE_MS / 1000} s`));
    }, DEADLINE_MS);
  });
  const work = withTools(request.tools_url, deadline, (tools) => decideCase(request, tools));
  let result;
  try {
    result = await Promise.race([work, expired]);
  } catch (err) {
    if (err instanceof Deadline) {
      // The abort fails the calls in flight; let the session close (1 s at most) first.
      await Promise.race([work.catch(() => {}), new Promise((done) => setTimeout(done, 1000))]);
    }
    throw err;
  } finally {
    clearTimeout(timer);
  }
  const { decision, usage } = result;
  if (decision === null || typeof decision !== "object" || Array.isArray(decision)) {
    throw new Error("the decision must be an object");
  }
  return { decision, agent_version: AGENT_VERSION, ...(usage ? { usage } : {}) };
}

function invalid(body) {
  const problems = [];
  for (const key of ["event_id", "task_type"]) {
    if (typeof body?.[key] !== "string" || body[key] === "") {
      problems.push(`${key}: required, a non-empty string`);
    }
  }
  if (body?.payload === null || typeof body?.payload !== "object" || Array.isArray(body.payload)) {
    problems.push("payload: required, a JSON object");
  }
  return problems.length ? `invalid request: ${problems.join("; ")}` : null;
}

function oneLine(err) {
  const text = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  return text.split(/\s+/).join(" ").slice(0, 300);
}

function reply(res, status, body) {
  const json = typeof body !== "string";
  const data = json ? JSON.stringify(body) : body;
  res.writeHead(status, {
    "Content-Type": json ? "application/json" : "text/plain; charset=utf-8",
    "Content-Length": Buffer.byteLength(data),
  });
  res.end(data);
}

async function readJson(req) {
  const chunks = [];
  for await (const chunk of req) {
    chunks.push(chunk);
  }
  return JSON.parse(Buffer.concat(chunks).toString("utf8"));
}

const server = http.createServer(async (req, res) => {
  if (req.method === "GET" && req.url === "/healthz") {
    reply(res, 200, { status: "ok", agent_version: AGENT_VERSION });
    return;
  }
  if (req.method !== "POST") {
    reply(res, 405, "POST the agent contract's request");
    return;
  }
  let request;
  try {
    request = await readJson(req);
  } catch (err) {
    reply(res, 400, `request body is not JSON: ${oneLine(err)}`);
    return;
  }
  const problem = invalid(request);
  if (problem) {
    reply(res, 400, problem);
    return;
  }
  try {
    reply(res, 200, await answer(request));
  } catch (err) {
    const reason = err instanceof Deadline ? err.message : `agent raised ${oneLine(err)}`;
    const safe = request.tools_url ? reason.replaceAll(request.tools_url, "<tools URL>") : reason;
    console.error(`case ${request.event_id}: ${safe}`);
    reply(res, err instanceof Deadline ? 504 : 500, safe);
  }
});

server.listen(PORT, HOST, () => {
  const { port } = server.address();
  console.log(`listening on http://${HOST}:${port}`);
});

function stop() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
