// shopfeed viewer: what a user's feed looks like, and the same feed under another version.
//
// Reads only the HTTP API. Every feed request carries preview=1 (no served set, no exposure).
// The admin token lives in this tab's sessionStorage and travels only as an Authorization
// header on this page's API calls (a server with an admin token requires it for previews of
// other users' feeds and for the example users too). Every string from the API is put in the page with
// textContent (post text is user-generated): this file never assigns HTML.
(function () {
  "use strict";

  var TOKEN_KEY = "shopfeed.viewer.adminToken";
  var PAGE_SIZE = 20;
  var LIKES_WITH_TEXT = 5; // liked posts whose title is fetched for the history panel
  var NEEDS_TOKEN = "This server shows feeds and example users only with the admin token " +
                    "(Admin token, above).";
  var REASONS = {
    collaborative: "people with similar taste engaged with it",
    content: "close in content to posts this user engaged with",
    followed_author: "from an author this user follows",
    trending: "trending now",
    co_engagement: "engaged with together with posts this user liked",
    fresh: "a new post",
    purchased_together: "links products bought with this user's purchases",
    interest: "matches the user's stated interests",
    friend: "from a friend (shared group-buys or shares) this user does not follow",
  };
  var GROUPS_SHOWN = 5; // open groups and deals listed in the group-buying panel
  var DEAL_REASONS = {
    similar_to_bought: "similar to what this user bought",
    liked_posts: "linked by posts this user liked",
    friends_bought: "friends bought it or joined its groups",
    bought_before: "this user bought it before",
    popular_groups: "many groups start on it",
    groups_succeed: "its groups fill up",
  };

  var state = {
    user: "",
    token: readToken(),
    live: null,
    versions: [], // ready versions, newest first
    experiments: [],
    pending: { base: "", compare: "" }, // from the address, kept until a token can use them
  };

  // --- small helpers ------------------------------------------------------------------------
  function $(sel, root) { return (root || document).querySelector(sel); }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else if (k === "className") node.className = attrs[k];
      else node.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (child) { if (child) node.appendChild(child); });
    return node;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  function readToken() {
    try { return window.sessionStorage.getItem(TOKEN_KEY); } catch (e) { return null; }
  }

  function writeToken(token) {
    state.token = token;
    try {
      if (token) window.sessionStorage.setItem(TOKEN_KEY, token);
      else window.sessionStorage.removeItem(TOKEN_KEY);
    } catch (e) { /* storage disabled: the token lasts until the page is left */ }
  }

  function ApiError(status, message) {
    this.status = status;
    this.message = message;
  }

  // GET a JSON document, with the bearer token when one is set; admin=true: fails without one.
  function api(path, admin) {
    var headers = { Accept: "application/json" };
    if (admin && !state.token) return Promise.reject(new ApiError(401, "the admin token is not set"));
    if (state.token) headers.Authorization = "Bearer " + state.token;
    return fetch(path, { headers: headers, credentials: "omit", cache: "no-store" })
      .then(function (resp) {
        return resp.json().catch(function () { return {}; }).then(function (body) {
          if (resp.ok) return body;
          var msg = body && body.error ? body.error.message : resp.statusText;
          if (resp.status === 401 && headers.Authorization) {
            forgetToken("the admin token was rejected");
          }
          throw new ApiError(resp.status, msg);
        });
      });
  }

  function errorText(err) {
    return err instanceof ApiError ? "Error " + err.status + ": " + err.message : String(err);
  }

  function reasonText(reason) {
    if (!reason) return "";
    if (reason.indexOf("similar_to:") === 0) {
      return "similar to post " + reason.slice(11) + ", which this user liked";
    }
    if (reason.indexOf("liked:") === 0) return "this user liked " + reason.slice(6);
    return REASONS[reason] || reason;
  }

  function shortTime(value) {
    if (value === null || value === undefined || value === "") return "";
    if (typeof value === "number") value = new Date(value * 1000).toISOString();
    return String(value).replace("T", " ").slice(0, 16);
  }

  function price(value) {
    var n = Number(value);
    return value === null || value === undefined || isNaN(n) ? "–" : n.toFixed(2);
  }

  function userLink(userId, label) {
    var a = el("a", { className: "user-link", href: "?user=" + encodeURIComponent(userId),
                      text: label || userId, "data-user": userId });
    a.addEventListener("click", function (ev) {
      if (ev.metaKey || ev.ctrlKey || ev.shiftKey) return; // a new tab starts a new session
      ev.preventDefault();
      showUser(userId, true);
    });
    return a;
  }

  // --- cards ----------------------------------------------------------------------------------
  function productItem(p) {
    var stock = p.in_stock ? "in stock" : "out of stock";
    return el("li", { className: "product" + (p.in_stock ? "" : " oos") }, [
      el("span", { className: "p-title", text: p.title || p.product_id }),
      el("span", { className: "p-price", text: price(p.price) }),
      el("span", { className: "p-stock " + (p.in_stock ? "in" : "out"), text: stock }),
    ]);
  }

  function card(item, rank) {
    var head = el("div", { className: "card-head" }, [
      el("span", { className: "rank", text: "#" + rank }),
      userLink(item.author_id, "@" + item.author_id),
      el("span", { className: "when", text: shortTime(item.created_at) }),
    ]);
    var products = (item.products || []).map(productItem);
    var why = el("p", { className: "why", "data-reason": item.reason || "" }, [
      el("span", { className: "why-label", text: "Why: " }),
      el("span", { className: "why-text", text: reasonText(item.reason) }),
      el("span", { className: "why-code",
                   text: " (" + item.reason + ", score " + Number(item.score).toFixed(3) + ")" }),
    ]);
    return el("li", { className: "card", "data-post-id": item.post_id }, [
      head,
      item.title ? el("h3", { className: "title", text: item.title }) : null,
      el("p", { className: "text", text: item.text || "" }),
      products.length ? el("ul", { className: "products" }, products) : null,
      el("p", { className: "post-id", text: item.post_id }),
      why,
    ]);
  }

  // --- a feed column --------------------------------------------------------------------------
  function Column(root, compare) {
    this.root = root;
    this.compare = compare; // the comparison column needs the admin token
    this.select = $(".version", root);
    this.meta = $(".meta", root);
    this.status = $(".status", root);
    this.cards = $(".cards", root);
    this.more = $(".more", root);
    this.ids = [];
    this.cursor = null;
    this.loaded = false;
    this.seq = 0;
    var self = this;
    this.more.addEventListener("click", function () { self.load(false); });
    this.select.addEventListener("change", function () {
      state.pending = { base: colA.version(), compare: colB.version() };
      syncUrl(false);
      self.load(true);
    });
  }

  Column.prototype.version = function () { return this.select.value; };

  Column.prototype.reset = function (message) {
    this.seq += 1;
    this.ids = [];
    this.cursor = null;
    this.loaded = false;
    clear(this.cards);
    this.meta.textContent = "";
    this.more.hidden = true;
    this.root.removeAttribute("data-version");
    this.status.textContent = message || "";
    markOverlap();
  };

  Column.prototype.url = function () {
    var q = new URLSearchParams({ preview: "1", limit: String(PAGE_SIZE) });
    if (this.version()) q.set("version", this.version());
    if (this.cursor) q.set("cursor", this.cursor);
    return "/v1/feed/" + encodeURIComponent(state.user) + "?" + q.toString();
  };

  Column.prototype.load = function (reset) {
    if (!state.user) return this.reset("Pick a user above, or one of the examples.");
    if (this.compare && !state.token) {
      return this.reset("The comparison column needs the admin token (Admin token, above): " +
                        "it shows this user's feed under another version or experiment arm.");
    }
    if (this.compare && !this.version()) {
      return this.reset("No other ready version or experiment arm to compare with.");
    }
    if (reset) this.reset("");
    var self = this;
    var seq = ++this.seq;
    this.status.textContent = "Loading…";
    this.more.disabled = true;
    return api(this.url(), Boolean(this.version())).then(function (page) {
      if (seq !== self.seq) return;
      self.show(page);
    }, function (err) {
      if (seq !== self.seq) return;
      self.status.textContent = err.status === 401 && !state.token ? NEEDS_TOKEN : errorText(err);
      self.more.disabled = false;
    });
  };

  Column.prototype.show = function (page) {
    var self = this;
    page.items.forEach(function (item) {
      self.ids.push(item.post_id);
      self.cards.appendChild(card(item, self.ids.length));
    });
    this.loaded = true;
    this.cursor = page.next_cursor;
    this.root.setAttribute("data-version", page.model_version || "");
    var route = page.experiment ? " · experiment " + page.experiment + ", arm " + page.arm : "";
    this.meta.textContent = "version " + page.model_version + route + " · " +
      this.ids.length + " posts" + (page.degraded ? " · degraded (Redis down)" : "");
    this.status.textContent = this.ids.length ? "" : "No posts for this user.";
    this.more.hidden = !page.next_cursor || page.items.length === 0;
    this.more.disabled = false;
    markOverlap();
  };

  var colA = new Column($("#col-a"), false);
  var colB = new Column($("#col-b"), true);

  // Posts only one column shows get a badge; the comparison column says how much overlaps.
  function markOverlap() {
    var both = colA.loaded && colB.loaded;
    [[colA, colB], [colB, colA]].forEach(function (pair) {
      var other = new Set(pair[1].ids);
      pair[0].cards.querySelectorAll(".card").forEach(function (node) {
        node.classList.toggle("only-here", both && !other.has(node.getAttribute("data-post-id")));
      });
    });
    var summary = $("#col-b .overlap");
    if (summary) summary.remove();
    if (both) {
      var a = new Set(colA.ids);
      var shared = colB.ids.filter(function (id) { return a.has(id); }).length;
      colB.meta.appendChild(el("span", {
        className: "overlap",
        text: " · " + shared + " of " + colB.ids.length + " also on the left" +
              " (marked edge: only in one column)",
      }));
    }
  }

  // --- version and arm selectors --------------------------------------------------------------
  function option(value, label) { return el("option", { value: value, text: label }); }

  function fillSelectors(wantedA, wantedB) {
    clear(colA.select);
    colA.select.appendChild(option("", "assigned version (live or experiment arm)"));
    clear(colB.select);
    if (!state.token) {
      colB.select.appendChild(option("", "comparison: admin token needed"));
      colB.select.disabled = true;
      colA.select.disabled = true;
      return;
    }
    colA.select.disabled = false;
    colB.select.disabled = false;
    colB.select.appendChild(option("", "no comparison"));
    [colA.select, colB.select].forEach(function (select) {
      var group = el("optgroup", { label: "versions" });
      state.versions.forEach(function (v) {
        group.appendChild(option(v.version, v.version + (v.live ? " (live)" : "")));
      });
      select.appendChild(group);
      state.experiments.forEach(function (exp) {
        if (exp.status && exp.status !== "running") return;
        var g = el("optgroup", { label: "experiment " + exp.name });
        (exp.arms || []).forEach(function (arm) {
          g.appendChild(option(arm.version, "arm " + arm.name + " (" + arm.weight + "%) → " +
                               arm.version));
        });
        select.appendChild(g);
      });
    });
    colA.select.value = wantedA || "";
    if (colA.select.value !== (wantedA || "")) colA.select.value = "";
    colB.select.value = wantedB || defaultCompare();
    if (!colB.select.value) colB.select.value = defaultCompare();
  }

  // The newest ready version that is not live, else an experiment arm's version that is not.
  function defaultCompare() {
    for (var i = 0; i < state.versions.length; i++) {
      if (!state.versions[i].live) return state.versions[i].version;
    }
    for (var j = 0; j < state.experiments.length; j++) {
      var arms = state.experiments[j].arms || [];
      for (var k = 0; k < arms.length; k++) {
        if (arms[k].version !== state.live) return arms[k].version;
      }
    }
    return "";
  }

  function loadAdmin() {
    if (!state.token) {
      state.versions = [];
      state.experiments = [];
      return Promise.resolve();
    }
    return Promise.all([api("/v1/admin/versions", true), api("/v1/admin/experiments", true)])
      .then(function (res) {
        state.live = res[0].live;
        state.versions = res[0].versions.filter(function (v) { return v.state === "ready"; });
        state.experiments = res[1].experiments || [];
      }, function (err) {
        state.versions = [];
        state.experiments = [];
        tokenMessage(errorText(err));
      });
  }

  // --- history panel --------------------------------------------------------------------------
  function historyList(title, entries, render) {
    var list = el("ul", { className: "h-list" });
    entries.forEach(function (entry) { list.appendChild(el("li", {}, render(entry))); });
    if (!entries.length) list.appendChild(el("li", { className: "muted", text: "none" }));
    return el("section", { className: "h-section" }, [el("h3", { text: title }), list]);
  }

  function loadHistory() {
    var body = $("#history-body");
    clear(body);
    if (!state.user) return body.appendChild(el("p", { className: "muted", text: "Pick a user." }));
    if (!state.token) {
      return body.appendChild(el("p", { className: "muted",
        text: "Recent likes, purchases and follows need the admin token (Admin token, above)." }));
    }
    var user = state.user;
    body.appendChild(el("p", { className: "muted", text: "Loading…" }));
    api("/v1/admin/users/" + encodeURIComponent(user) + "/history?limit=20", true)
      .then(function (h) {
        if (user !== state.user) return;
        clear(body);
        body.appendChild(historyList("Likes since training", h.likes, function (like) {
          return [el("span", { className: "h-post", "data-post-id": like.post_id,
                               text: like.post_id }),
                  el("span", { className: "when", text: " " + shortTime(like.ts) })];
        }));
        body.appendChild(historyList("Purchases", h.purchases, function (pid) {
          return [el("span", { text: pid })];
        }));
        body.appendChild(historyList("Follows", h.follows, function (author) {
          return [userLink(author, "@" + author)];
        }));
        h.likes.slice(0, LIKES_WITH_TEXT).forEach(function (like) { describeLike(body, like); });
      }, function (err) {
        if (user !== state.user) return;
        clear(body);
        body.appendChild(el("p", { className: "status", text: errorText(err) }));
      });
  }

  function describeLike(body, like) {
    api("/v1/posts/" + encodeURIComponent(like.post_id), false).then(function (post) {
      var node = body.querySelector('.h-post[data-post-id="' + CSS.escape(like.post_id) + '"]');
      if (node) node.textContent = like.post_id + ": " + (post.title || post.text || "").slice(0, 60);
    }, function () { /* a deleted post keeps its bare id */ });
  }

  // --- group-buying panel: open groups to join, deals to launch ---------------------------------
  function groupReason(reason) {
    var parts = String(reason || "").split("|");
    var out = [];
    parts.forEach(function (p) {
      if (p.indexOf("friend_started:") === 0) out.push("started by friend " + p.slice(15));
      else if (p === "wants_product") out.push("a product this user wants");
      else if (p) out.push(p);
    });
    return out.join(", ");
  }

  function loadGroups() {
    var body = $("#groups-body");
    clear(body);
    if (!state.user) return body.appendChild(el("p", { className: "muted", text: "Pick a user." }));
    var user = state.user;
    var base = "/v1/users/" + encodeURIComponent(user);
    body.appendChild(el("p", { className: "muted", text: "Loading…" }));
    Promise.all([api(base + "/groups?limit=" + GROUPS_SHOWN, false),
                 api(base + "/deals?limit=" + GROUPS_SHOWN, false)]).then(function (res) {
      if (user !== state.user) return;
      clear(body);
      body.appendChild(historyList("Open groups to join", res[0].items, function (g) {
        var left = g.spots_left !== undefined ? g.spots_left : g.size - g.members.length;
        return [el("span", { className: "g-product", text: g.product_id }),
                el("span", { className: "g-spots",
                             text: " " + left + " of " + g.size + " spots left, until " +
                                   shortTime(g.expires_at) }),
                el("span", { className: "why", text: " " + groupReason(g.reason) })];
      }));
      var basis = res[1].basis === "popular" ? " (popular: no signal for this user)" : "";
      body.appendChild(historyList("Deals to launch" + basis, res[1].items, function (d) {
        return [el("span", { className: "d-product", text: d.product_id }),
                el("span", { className: "d-score", text: " " + Number(d.score).toFixed(3) }),
                el("span", { className: "why", text: " " + (DEAL_REASONS[d.reason] || d.reason) }),
                el("span", { className: "d-friends",
                             text: d.friends && d.friends.length ? " · friends: " +
                                   d.friends.join(", ") : "" })];
      }));
    }, function (err) {
      if (user !== state.user) return;
      clear(body);
      body.appendChild(el("p", { className: "status", text: errorText(err) }));
    });
  }

  // --- user, examples, address bar ------------------------------------------------------------
  function syncUrl(push) {
    var q = new URLSearchParams();
    if (state.user) q.set("user", state.user);
    var base = state.token ? colA.version() : state.pending.base;
    var compare = state.token ? colB.version() : state.pending.compare;
    if (base) q.set("base", base);
    if (compare) q.set("compare", compare);
    var url = location.pathname + (q.toString() ? "?" + q.toString() : "");
    if (url === location.pathname + location.search) return;
    if (push) history.pushState(null, "", url);
    else history.replaceState(null, "", url);
  }

  function showUser(userId, push) {
    state.user = (userId || "").trim();
    $("#user").value = state.user;
    document.title = state.user ? state.user + " · shopfeed viewer" : "shopfeed viewer";
    syncUrl(push);
    colA.load(true);
    colB.load(true);
    loadHistory();
    loadGroups();
  }

  function loadExamples() {
    var box = $("#examples");
    var list = $("#example-users");
    api("/v1/viewer/examples", false).then(function (res) {
      clear(box);
      clear(list);
      if (!res.users.length) return;
      box.appendChild(el("span", { className: "muted", text: "Examples: " }));
      res.users.forEach(function (u) {
        var b = el("button", { type: "button", className: "example", text: u });
        b.addEventListener("click", function () { showUser(u, true); });
        box.appendChild(b);
        list.appendChild(el("option", { value: u }));
      });
    }, function (err) {
      clear(box);
      clear(list);
      // no live version yet: no examples; a server with an admin token: after the token
      if (err.status === 401 && !state.token) box.appendChild(el("span", { text: NEEDS_TOKEN }));
    });
  }

  function tokenMessage(text) { $("#token-message").textContent = text; }

  function renderTokenState() {
    $("#token-state").textContent = state.token ? "set for this tab" : "not set";
    $("#forget-token").hidden = !state.token;
  }

  function forgetToken(why) {
    writeToken(null);
    renderTokenState();
    tokenMessage(why || "Forgotten.");
  }

  // Re-read versions/experiments, then reload everything that depends on the token.
  function refreshAdmin(wantedA, wantedB) {
    renderTokenState();
    loadExamples();
    return loadAdmin().then(function () {
      fillSelectors(wantedA, wantedB);
      renderTokenState();
      if (state.user) showUser(state.user, false);
      else syncUrl(false);
    });
  }

  function fromUrl() {
    var q = new URLSearchParams(location.search);
    return { user: q.get("user") || "", base: q.get("base") || "", compare: q.get("compare") || "" };
  }

  function start() {
    $("#user-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      showUser($("#user").value, true);
    });
    $("#token-form").addEventListener("submit", function (ev) {
      ev.preventDefault();
      var input = $("#token");
      var token = input.value.trim();
      input.value = ""; // the token never stays in the page
      if (!token) return;
      writeToken(token);
      tokenMessage("Checking…");
      api("/v1/admin/versions", true).then(function () {
        tokenMessage("Accepted.");
        refreshAdmin(state.pending.base, state.pending.compare);
      }, function (err) {
        writeToken(null);
        renderTokenState();
        tokenMessage(err.status === 404 ? "The admin API is off on this server." : errorText(err));
      });
    });
    $("#forget-token").addEventListener("click", function () {
      forgetToken("Forgotten.");
      refreshAdmin("", "");
    });
    window.addEventListener("popstate", function () {
      var wanted = fromUrl();
      state.pending = { base: wanted.base, compare: wanted.compare };
      fillSelectors(wanted.base, wanted.compare);
      showUser(wanted.user, false);
    });
    var wanted = fromUrl();
    state.user = wanted.user.trim();
    state.pending = { base: wanted.base, compare: wanted.compare };
    refreshAdmin(wanted.base, wanted.compare).then(function () {
      if (!state.user) showUser("", false);
    });
  }

  start();
})();
