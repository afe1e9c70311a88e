// What the device keeps in the browser, per origin (so per server): its identity in
// localStorage; its strategy state (SCAFFOLD's c_i, as a safetensors file) and an update
// not yet acknowledged in IndexedDB. A reload resumes as the same device, with the same
// state, and uploads a pending update again under the same idempotency key.

const IDENTITY = "fedge.device";
const DB = "fedge-client";
const KV = "kv";

export function loadIdentity() {
  try {
    const identity = JSON.parse(localStorage.getItem(IDENTITY));
    return identity?.device_id && identity?.token ? identity : null;
  } catch {
    return null;
  }
}

export function saveIdentity(identity) {
  localStorage.setItem(
    IDENTITY,
    JSON.stringify({ device_id: identity.device_id, token: identity.token }),
  );
}

function open() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(KV);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

// Run `work(store)` in one transaction (all of it or nothing); resolves to what the last
// request it made returned.
async function transaction(mode, work) {
  const db = await open();
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(KV, mode);
      let last;
      const request = work(tx.objectStore(KV));
      if (request) request.onsuccess = () => (last = request.result);
      tx.oncomplete = () => resolve(last);
      tx.onerror = () => reject(tx.error);
      tx.onabort = () => reject(tx.error ?? new Error("storage transaction aborted"));
    });
  } finally {
    db.close();
  }
}

export const get = (key) => transaction("readonly", (s) => s.get(key));
export const put = (key, value) => transaction("readwrite", (s) => void s.put(value, key));

// The strategy state (bytes) or null.
export const loadClientState = async () => (await get("client_state")) ?? null;
export const saveClientState = (bytes) => put("client_state", bytes);

// {url, key, round, body, state} of an update not yet acknowledged, or null.
export const loadPending = async () => (await get("pending")) ?? null;
export const savePending = (pending) => put("pending", pending);

// The server answered the pending update: with its state kept (2xx: the update counts,
// so c_i advances) or dropped (refused or too late: c_i stays).
export function settlePending(keepState) {
  return transaction("readwrite", (s) => {
    const request = s.get("pending");
    request.onsuccess = () => {
      const state = request.result?.state;
      if (keepState && state) s.put(state, "client_state");
      s.delete("pending");
    };
  });
}

// A new enrollment: a new device starts from zero.
export function forgetDevice() {
  localStorage.removeItem(IDENTITY);
  return transaction("readwrite", (s) => void s.clear());
}
