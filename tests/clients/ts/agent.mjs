// A refund agent on the official MCP TypeScript SDK (@modelcontextprotocol/sdk), for the
// sidecar's tool gateway tests (tests/shadow/gateway/test_clients.py).
//
// It serves the sidecar's agent contract over HTTP on 127.0.0.1 (a free port, printed as the
// first line of stdout: {"url": ...}): POST {event_id, task_type, payload, shadow, tools_url}
// answers {decision, agent_version}. For each request it opens the SDK Client with a
// StreamableHTTPClientTransport on tools_url, lists the tools (so the client checks every
// result against its tool's outputSchema), reads the order, makes the typed write with the
// order's amount, and closes the MCP session (DELETE; the SDK throws on a non-2xx answer)
// before answering. What it saw, or the error that stopped it, is one JSON line on stdout
// per request, for the test to check.
import http from "node:http";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const AGENT_VERSION = "ts-agent@1";

async function decide(request) {
  const client = new Client({ name: "shadow-ts-agent", version: "1.0.0" });
  const exchanges = []; // [method, status] of every HTTP answer the transport got
  const recording = async (input, init) => {
    const response = await fetch(input, init);
    exchanges.push([init?.method ?? "GET", response.status]);
    return response;
  };
  const transport = new StreamableHTTPClientTransport(new URL(request.tools_url), { fetch: recording });
  await client.connect(transport);
  try {
    const { tools } = await client.listTools();
    const orderId = request.payload.order_id;
    const order = await client.callTool({ name: "get_order", arguments: { order_id: orderId } });
    if (order.isError) {
      throw new Error(`get_order failed: ${JSON.stringify(order.content)}`);
    }
    const refund = await client.callTool({
      name: "issue_refund",
      arguments: { order_id: orderId, amount: order.structuredContent.amount },
    });
    if (refund.isError) {
      throw new Error(`issue_refund failed: ${JSON.stringify(refund.content)}`);
    }
    const session = transport.sessionId ?? null;
    const protocol = transport.protocolVersion ?? null;
    await transport.terminateSession();
    return {
      tools: tools.map((tool) => tool.name),
      output_schema: tools.find((tool) => tool.name === "issue_refund")?.outputSchema ?? null,
      order: order.structuredContent ?? null,
      refund: refund.structuredContent ?? null,
      refund_meta: refund._meta ?? null,
      session,
      protocol,
      closed: transport.sessionId === undefined,
      exchanges,
    };
  } finally {
    await client.close();
  }
}

function readJson(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on("data", (chunk) => chunks.push(chunk));
    req.on("end", () => {
      try {
        resolve(JSON.parse(Buffer.concat(chunks).toString("utf8")));
      } catch (err) {
        reject(err);
      }
    });
    req.on("error", reject);
  });
}

function reply(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(data) });
  res.end(data);
}

const server = http.createServer(async (req, res) => {
  if (req.method !== "POST") {
    reply(res, 405, { error: "POST the agent contract's request" });
    return;
  }
  let request;
  try {
    request = await readJson(req);
  } catch (err) {
    reply(res, 400, { error: `body is not JSON: ${err}` });
    return;
  }
  try {
    const observed = await decide(request);
    console.log(JSON.stringify({ event_id: request.event_id, observed }));
    reply(res, 200, { decision: { action: "approve" }, agent_version: AGENT_VERSION });
  } catch (err) {
    // Reported by the test; answered without a decision (an agent_error, never retried as a
    // transport failure would be).
    const error = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
    console.log(JSON.stringify({ event_id: request.event_id, error }));
    reply(res, 200, { error: "the agent failed" });
  }
});

server.listen(0, "127.0.0.1", () => {
  const { port } = server.address();
  console.log(JSON.stringify({ url: `http://127.0.0.1:${port}/decide` }));
});

function stop() {
  server.close(() => process.exit(0));
  server.closeAllConnections();
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
