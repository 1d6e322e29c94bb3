"""Page assembly, shared by the service and ``feed evaluate``: the tables a page is ranked from
(:mod:`feed.serving.state`) and the ranking itself (:mod:`feed.serving.ranking`: gather the
candidate sources, filter, pick a diverse page). Pure (numpy and :mod:`feed.contract` only), so
the web process can import it and the offline evaluation scores exactly the page the service
would serve."""
