// The service worker: shows each push as a notification and opens its page
// when the notification is clicked. It runs while no page of the site is open.

const DEFAULTS = { title: 'New notification', body: '', icon: '/icon.svg', url: '/' };

// The payload is JSON {title, body, icon, url, tag} when it comes from the
// example's backend; anything else (plain text, nothing) still shows something.
function readPayload(data) {
  if (!data) {
    return { ...DEFAULTS };
  }
  try {
    const parsed = data.json();
    if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) {
      return { ...DEFAULTS, ...parsed };
    }
    return { ...DEFAULTS, body: String(parsed) };
  } catch (_notJson) {
    return { ...DEFAULTS, body: data.text() };
  }
}

self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', (event) => event.waitUntil(self.clients.claim()));

self.addEventListener('push', (event) => {
  const payload = readPayload(event.data);
  const options = {
    body: String(payload.body),
    icon: payload.icon,
    data: { url: new URL(payload.url, self.location.origin).href },
  };
  if (payload.tag) {
    // The same tag replaces an earlier notification instead of stacking.
    options.tag = String(payload.tag);
  }
  event.waitUntil(self.registration.showNotification(String(payload.title), options));
});

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  const url = (event.notification.data && event.notification.data.url) || self.location.origin + '/';
  event.waitUntil((async () => {
    const windows = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
    const open = windows.find((client) => client.url === url);
    if (open) {
      return open.focus();
    }
    return self.clients.openWindow(url);
  })());
});

// The browser replaced the subscription (expiry, key rotation): subscribe
// again with the same key, register the new one for the same user (the page
// put the user in this script's URL), then drop the old endpoint.
self.addEventListener('pushsubscriptionchange', (event) => {
  event.waitUntil((async () => {
    const user = new URL(self.location.href).searchParams.get('user');
    const old = event.oldSubscription;
    let applicationServerKey = old && old.options && old.options.applicationServerKey;
    if (!applicationServerKey) {
      const key = (await (await fetch('/vapid-public-key')).text()).trim();
      const padded = key.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - key.length % 4) % 4);
      applicationServerKey = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    }
    const fresh = event.newSubscription ||
      await self.registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey });
    const json = { 'Content-Type': 'application/json' };
    await fetch('/subscriptions', {
      method: 'POST',
      headers: json,
      body: JSON.stringify({ user, subscription: fresh.toJSON() }),
    });
    if (old && old.endpoint !== fresh.endpoint) {
      await fetch('/subscriptions', { method: 'DELETE', headers: json, body: JSON.stringify({ endpoint: old.endpoint }) });
    }
  })());
});
