//! Sign-in and sessions through `app()` against a real PostgreSQL: the strict session cookie,
//! the anti-forgery token, sign-out, and tokens that are revoked or expire ending the sessions
//! opened with them.

use axum::body::Body;
use axum::http::{header, Request, StatusCode};

use crate::site::{setup, ADMIN, HOST};

#[tokio::test]
async fn pages_need_a_session_and_sign_in_sets_a_strict_cookie() {
    let site = setup().await;
    let r = site.get("/jobs/new", None).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), "/signin?next=%2Fjobs%2Fnew");

    let page = site.get("/signin?next=/jobs/new", None).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.body.contains("API token"));
    let pre = page.cookie("ifp_signin").unwrap();
    assert!(
        pre.contains("HttpOnly") && pre.contains("SameSite=Strict"),
        "{pre}"
    );
    let pre = pre.split(';').next().unwrap().to_string();
    let csrf = page.input("csrf");

    // A wrong anti-forgery token, or a foreign origin, is refused before the token is looked at.
    let r = site
        .post_form("/signin", &pre, &[("token", &site.alice), ("csrf", "x")])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let req = Request::post("/signin")
        .header(header::HOST, HOST)
        .header(header::ORIGIN, "http://evil.example")
        .header(header::COOKIE, &pre)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(
            serde_urlencoded::to_string([("token", site.alice.as_str()), ("csrf", &csrf)]).unwrap(),
        ))
        .unwrap();
    assert_eq!(site.send(req).await.status, StatusCode::FORBIDDEN);

    // A bad token re-shows the form with a message.
    let r = site
        .post_form("/signin", &pre, &[("token", "nope"), ("csrf", &csrf)])
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body.contains("not valid"), "{}", r.body);

    // Alice signs in, asking to go on to `next`.
    let alice_to = |next| {
        [
            ("token", site.alice.as_str()),
            ("csrf", &csrf),
            ("next", next),
        ]
    };
    let r = site
        .post_form("/signin", &pre, &alice_to("/jobs/new"))
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), "/jobs/new");
    let session = r.cookie("ifp_session").unwrap();
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Strict"),
        "{session}"
    );
    assert!(!session.contains("Secure"), "plain HTTP: {session}");
    let cookie = session.split(';').next().unwrap().to_string();
    assert_eq!(
        site.get("/jobs/new", Some(&cookie)).await.status,
        StatusCode::OK
    );

    // Behind an HTTPS proxy the cookie is Secure.
    let req = Request::post("/signin")
        .header(header::HOST, HOST)
        .header("x-forwarded-proto", "https")
        .header(header::COOKIE, &pre)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(
            serde_urlencoded::to_string([("token", ADMIN), ("csrf", &csrf)]).unwrap(),
        ))
        .unwrap();
    let r = site.send(req).await;
    assert!(r.cookie("ifp_session").unwrap().contains("Secure"));

    // An open redirect through `next` is not possible.
    let r = site
        .post_form("/signin", &pre, &alice_to("//evil.example/"))
        .await;
    assert_eq!(r.location(), "/");

    // The database keeps only the cookie's hash.
    let value = cookie.split_once('=').unwrap().1;
    let stored: i64 = sqlx::query_scalar("select count(*) from session where id = $1")
        .bind(value)
        .fetch_one(&site.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
}

#[tokio::test]
async fn sign_out_and_token_revocation_end_the_session() {
    let site = setup().await;
    let (cookie, csrf) = site.sign_in(&site.alice).await;
    // Signing out needs the form's token.
    let r = site
        .post_form("/signout", &cookie, &[("csrf", "bad")])
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = site
        .post_form("/signout", &cookie, &[("csrf", &csrf)])
        .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(
        site.get("/", Some(&cookie)).await.status,
        StatusCode::SEE_OTHER
    );

    let (cookie, _) = site.sign_in(&site.alice).await;
    sqlx::query("delete from api_token where name = 'alice'")
        .execute(&site.pool)
        .await
        .unwrap();
    assert_eq!(
        site.get("/", Some(&cookie)).await.status,
        StatusCode::SEE_OTHER
    );
}

/// Issue 16: tokens can expire and be revoked; either ends the API access and the browser
/// sessions opened with the token at once.
#[tokio::test]
async fn a_revoked_or_expired_token_stops_working_and_its_sessions_end() {
    let site = setup().await;
    let api_status = |token: String| {
        let site = &site;
        async move {
            let req = Request::get("/api/v1/jobs")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .body(Body::empty())
                .unwrap();
            site.send(req).await.status
        }
    };
    let carol = ifp_server::tokens::create(&site.pool, "carol", false, None)
        .await
        .unwrap();
    let (cookie, _) = site.sign_in(&carol).await;
    assert_eq!(api_status(carol.clone()).await, StatusCode::OK);

    let listed = ifp_server::tokens::list(&site.pool).await.unwrap();
    let id = listed.iter().find(|t| t.name == "carol").unwrap().id;
    let revoked = ifp_server::tokens::revoke(&site.pool, &id.to_string()[..8])
        .await
        .unwrap();
    assert_eq!((revoked.id, revoked.state()), (id, "revoked"));
    assert_eq!(api_status(carol.clone()).await, StatusCode::UNAUTHORIZED);
    let page = site.get("/jobs/new", Some(&cookie)).await;
    assert_eq!(page.status, StatusCode::SEE_OTHER, "{}", page.body);
    assert!(
        page.location().starts_with("/signin"),
        "{}",
        page.location()
    );
    // Alice's token and session are untouched.
    assert_eq!(api_status(site.alice.clone()).await, StatusCode::OK);

    // An expiring token works until its time, then neither it nor its session does.
    let brief = ifp_server::tokens::create(
        &site.pool,
        "dave",
        false,
        Some(std::time::Duration::from_secs(2)),
    )
    .await
    .unwrap();
    let (cookie, _) = site.sign_in(&brief).await;
    assert_eq!(api_status(brief.clone()).await, StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    assert_eq!(api_status(brief.clone()).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        site.get("/jobs/new", Some(&cookie)).await.status,
        StatusCode::SEE_OTHER
    );
    let states: Vec<_> = ifp_server::tokens::list(&site.pool)
        .await
        .unwrap()
        .iter()
        .map(|t| (t.name.clone(), t.state()))
        .collect();
    assert!(states.contains(&("dave".into(), "expired")), "{states:?}");
    assert!(states.contains(&("alice".into(), "active")), "{states:?}");

    // Bad ids and lifetimes are refused naming the value.
    for (id, says) in [
        ("abc", "is not a token id"),
        ("ffffffff", "no token has an id starting with ffffffff"),
    ] {
        let e = ifp_server::tokens::revoke(&site.pool, id)
            .await
            .unwrap_err();
        assert!(e.to_string().contains(says), "{id}: {e}");
    }
    let e = ifp_server::tokens::create(&site.pool, "erin", false, Some(Default::default()))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("between 1 second"), "{e}");
}
