// The page's half of Web Push: register the service worker, ask permission
// only when the user clicks, subscribe with the server's VAPID key, and keep
// the backend's copy of the subscription current.

const statusLine = document.getElementById('status');
const enableButton = document.getElementById('enable');
const disableButton = document.getElementById('disable');
const testButton = document.getElementById('test');

// A real app takes the user from its session; the example keeps one per browser.
const user = localStorage.getItem('pushq-example-user') ||
  `user-${crypto.randomUUID()}`;
localStorage.setItem('pushq-example-user', user);
document.getElementById('user').textContent = user;

function show(message) {
  statusLine.textContent = message;
}

function supported() {
  return 'serviceWorker' in navigator && 'PushManager' in window && 'Notification' in window;
}

// The VAPID public key travels base64url-encoded; PushManager wants bytes.
function base64UrlToBytes(text) {
  const padded = text.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - text.length % 4) % 4);
  return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
}

async function send(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  if (!response.ok) {
    throw new Error(`${method} ${path}: ${response.status} ${await response.text()}`);
  }
  return response;
}

async function subscribe(registration) {
  const key = await (await fetch('/vapid-public-key')).text();
  const subscription = await registration.pushManager.subscribe({
    userVisibleOnly: true,
    applicationServerKey: base64UrlToBytes(key.trim()),
  });
  await send('POST', '/subscriptions', { user, subscription: subscription.toJSON() });
  return subscription;
}

function reflect(subscription) {
  const permission = Notification.permission;
  enableButton.disabled = Boolean(subscription) || permission === 'denied';
  disableButton.disabled = !subscription;
  testButton.disabled = !subscription;
  if (permission === 'denied') {
    show('Notifications are blocked for this site. Allow them in the browser\'s site settings to subscribe.');
  } else if (subscription) {
    show('Notifications are on for this browser.');
  } else {
    show('Notifications are off. Enable them to get a test notification.');
  }
}

async function main() {
  if (!supported()) {
    show('This browser cannot receive Web Push notifications (no service worker, Push API or Notification support).');
    return;
  }
  // The user rides in the script's URL, so that the service worker can
  // re-register a replaced subscription for the right user on its own.
  const registration = await navigator.serviceWorker.register(`/sw.js?user=${encodeURIComponent(user)}`);
  await navigator.serviceWorker.ready;
  reflect(await registration.pushManager.getSubscription());

  enableButton.addEventListener('click', async () => {
    enableButton.disabled = true;
    try {
      // Asked only here, on the user's click, as browsers require.
      const permission = await Notification.requestPermission();
      if (permission === 'denied') {
        reflect(null);
        return;
      }
      if (permission !== 'granted') {
        show('No decision yet: click "Enable notifications" again when you are ready.');
        enableButton.disabled = false;
        return;
      }
      reflect(await subscribe(registration));
    } catch (error) {
      show(`Could not subscribe: ${error.message}`);
      enableButton.disabled = false;
    }
  });

  disableButton.addEventListener('click', async () => {
    const subscription = await registration.pushManager.getSubscription();
    if (subscription) {
      await send('DELETE', '/subscriptions', { endpoint: subscription.endpoint });
      await subscription.unsubscribe();
    }
    reflect(null);
  });

  testButton.addEventListener('click', async () => {
    try {
      await send('POST', '/notify', {
        user,
        title: 'Hello from pushq',
        body: 'This notification went through RabbitMQ, a pushq worker and your browser\'s push service.',
        url: '/?from=notification',
      });
      show('Sent: the notification should appear in a moment.');
    } catch (error) {
      show(`Could not send: ${error.message}`);
    }
  });
}

main().catch((error) => show(`Something went wrong: ${error.message}`));
