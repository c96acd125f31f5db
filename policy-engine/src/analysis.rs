//! What a policy can see, read off Cedar's structured policy tree (PST).
//!
//! Three questions, each answered conservatively (a wrong "cannot matter" would change
//! a decision; a wrong "might matter" only costs time):
//! - [`Scope`]: which actions, tiers and principals a policy can apply to, so a
//!   request only meets the policies of its slice;
//! - [`monotonicity_issues`]: whether adding a factor could ever turn allow into deny;
//! - [`References`]: which attributes decisions read, so plans can be cached per
//!   attribute class instead of per user.
//!
//! And one compilation: [`residual_table`] turns what partial evaluation leaves of a
//! policy (a condition over the unknown `context.factors`) into a [`FactorTable`].

use std::collections::BTreeSet;
use std::str::FromStr;

use cedar_policy::pst::{self, BinaryOp, Clause, Effect, Expr, Literal, UnaryOp, Var};

use crate::factor::{Factor, FactorSet, FactorTable};
use crate::model::{cedar_types, Action, Tier};

/// Which principals a policy's scope admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrincipalScope {
    Any,
    /// `principal in Group::"g"` (or `is User in Group::"g"`).
    Group(String),
    /// `principal == User::"u"`.
    User(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub principal: PrincipalScope,
    /// `None`: any action.
    pub actions: Option<Vec<Action>>,
    /// `None`: any tier (including scopes on a single device).
    pub tier: Option<Tier>,
}

fn entity_of(e: &pst::EntityOrSlot) -> Option<&pst::EntityUID> {
    match e {
        pst::EntityOrSlot::Entity(uid) => Some(uid),
        _ => None,
    }
}

pub fn scope_of(t: &pst::Template) -> Scope {
    let principal = match &t.principal {
        pst::PrincipalConstraint::In(e)
        | pst::PrincipalConstraint::IsIn(_, e)
        | pst::PrincipalConstraint::Eq(e) => match entity_of(e) {
            Some(uid) if uid.ty.to_string() == cedar_types::GROUP => {
                PrincipalScope::Group(uid.eid.to_string())
            }
            Some(uid) if uid.ty.to_string() == cedar_types::USER => {
                PrincipalScope::User(uid.eid.to_string())
            }
            _ => PrincipalScope::Any,
        },
        _ => PrincipalScope::Any,
    };
    let action_of = |uid: &pst::EntityUID| -> Option<Action> {
        (uid.ty.to_string() == cedar_types::ACTION)
            .then(|| Action::from_str(&uid.eid).ok())
            .flatten()
    };
    let actions = match &t.action {
        pst::ActionConstraint::Eq(uid) => action_of(uid).map(|a| vec![a]),
        pst::ActionConstraint::In(uids) => uids.iter().map(action_of).collect::<Option<Vec<_>>>(),
        _ => None,
    };
    let tier = match &t.resource {
        pst::ResourceConstraint::In(e) | pst::ResourceConstraint::IsIn(_, e) => {
            match entity_of(e) {
                Some(uid) if uid.ty.to_string() == cedar_types::TIER => {
                    Tier::from_str(&uid.eid).ok()
                }
                _ => None,
            }
        }
        _ => None,
    };
    Scope {
        principal,
        actions,
        tier,
    }
}

fn is_context_factors(e: &Expr) -> bool {
    match e {
        Expr::GetAttr { expr, attr } => {
            attr == "factors" && matches!(&**expr, Expr::Var(Var::Context))
        }
        Expr::Unknown { name } => name == "factors",
        _ => false,
    }
}

fn children(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::UnaryOp { expr, .. }
        | Expr::GetAttr { expr, .. }
        | Expr::HasAttr { expr, .. }
        | Expr::Like { expr, .. } => {
            vec![expr]
        }
        Expr::BinaryOp { left, right, .. } => vec![left, right],
        Expr::Is { expr, in_expr, .. } => {
            std::iter::once(&**expr).chain(in_expr.as_deref()).collect()
        }
        Expr::IfThenElse {
            cond,
            then_expr,
            else_expr,
        } => vec![cond, then_expr, else_expr],
        Expr::Set(items) => items.iter().map(|i| &**i).collect(),
        Expr::Record(m) => m.values().map(|v| &**v).collect(),
        _ => Vec::new(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Polarity {
    Positive,
    Negative,
    Both,
}

impl Polarity {
    fn flip(self) -> Self {
        match self {
            Polarity::Positive => Polarity::Negative,
            Polarity::Negative => Polarity::Positive,
            Polarity::Both => Polarity::Both,
        }
    }
}

/// Why the policy might not be monotone in `context.factors`; empty when it is.
///
/// A permit is monotone when every factor test (`contains`, `containsAll`,
/// `containsAny` on `context.factors`) sits under an even number of negations
/// (counting `unless`) and outside `if` conditions and comparisons; a forbid when every
/// test sits under an odd number. Any other use of `context.factors` (`==`, `isEmpty`,
/// as an argument) cannot be shown monotone and is reported.
pub fn monotonicity_issues(t: &pst::Template) -> Vec<String> {
    let mut issues = Vec::new();
    for clause in t.clauses() {
        let (expr, base) = match clause {
            Clause::When(e) => (e, Polarity::Positive),
            Clause::Unless(e) => (e, Polarity::Negative),
        };
        let pol = if t.effect == Effect::Forbid {
            base.flip()
        } else {
            base
        };
        walk_polarity(expr, pol, &mut issues);
    }
    issues.dedup();
    issues
}

fn walk_polarity(e: &Expr, pol: Polarity, issues: &mut Vec<String>) {
    match e {
        Expr::UnaryOp { op: UnaryOp::Not, expr } => walk_polarity(expr, pol.flip(), issues),
        Expr::BinaryOp { op: BinaryOp::And | BinaryOp::Or, left, right } => {
            walk_polarity(left, pol, issues);
            walk_polarity(right, pol, issues);
        }
        Expr::IfThenElse { cond, then_expr, else_expr } => {
            walk_polarity(cond, Polarity::Both, issues);
            walk_polarity(then_expr, pol, issues);
            walk_polarity(else_expr, pol, issues);
        }
        Expr::BinaryOp { op: BinaryOp::Contains | BinaryOp::ContainsAll | BinaryOp::ContainsAny, left, right }
            if is_context_factors(left) =>
        {
            match pol {
                Polarity::Positive => {}
                Polarity::Negative => issues.push(format!(
                    "`{e}` is negated (by `!`, `unless`, or a forbid's `when`), so presenting more factors can deny"
                )),
                Polarity::Both => issues.push(format!(
                    "`{e}` is used inside a comparison or an `if` condition, so presenting more factors can deny"
                )),
            }
            walk_polarity(right, Polarity::Both, issues);
        }
        _ if is_context_factors(e) => {
            issues.push("`context.factors` is used other than with contains/containsAll/containsAny, which cannot be shown monotone".into())
        }
        _ => {
            for c in children(e) {
                walk_polarity(c, Polarity::Both, issues);
            }
        }
    }
}

/// What the whole policy set reads, beyond scopes: decides which attributes go into a
/// plan cache key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct References {
    /// Attribute names read anywhere (`x.attr`, `x has attr`), whatever `x` is.
    pub attrs: BTreeSet<String>,
    /// A `User` entity literal appears somewhere: decisions may depend on the user id.
    pub user_literal: bool,
    /// A `Device` entity literal appears somewhere.
    pub device_literal: bool,
}

impl References {
    pub fn of(policies: impl IntoIterator<Item = pst::Policy>) -> Self {
        let mut r = References::default();
        for p in policies {
            let t = p.body();
            let mut note = |uid: &pst::EntityUID| match uid.ty.to_string().as_str() {
                cedar_types::USER => r.user_literal = true,
                cedar_types::DEVICE => r.device_literal = true,
                _ => {}
            };
            match &t.principal {
                pst::PrincipalConstraint::Eq(e)
                | pst::PrincipalConstraint::In(e)
                | pst::PrincipalConstraint::IsIn(_, e) => {
                    entity_of(e).into_iter().for_each(&mut note)
                }
                _ => {}
            }
            match &t.resource {
                pst::ResourceConstraint::Eq(e)
                | pst::ResourceConstraint::In(e)
                | pst::ResourceConstraint::IsIn(_, e) => {
                    entity_of(e).into_iter().for_each(&mut note)
                }
                _ => {}
            }
            for c in t.clauses() {
                let (Clause::When(e) | Clause::Unless(e)) = c;
                r.walk(e);
            }
        }
        r
    }

    fn walk(&mut self, e: &Expr) {
        match e {
            Expr::GetAttr { attr, .. } => {
                self.attrs.insert(attr.to_string());
            }
            Expr::HasAttr { attrs, .. } => self.attrs.extend(attrs.iter().map(|a| a.to_string())),
            Expr::Literal(Literal::EntityUID(uid)) => match uid.ty.to_string().as_str() {
                cedar_types::USER => self.user_literal = true,
                cedar_types::DEVICE => self.device_literal = true,
                _ => {}
            },
            _ => {}
        }
        for c in children(e) {
            self.walk(c);
        }
    }

    pub fn reads(&self, attr: &str) -> bool {
        self.attrs.contains(attr)
    }
}

/// The truth table of a residual policy (a policy partially evaluated with
/// `context.factors` unknown): its scope is gone and its clauses test only factors.
/// `None` when the residual holds anything else, and the caller must evaluate.
///
/// Works on Cedar's JSON form (EST): the structured tree refuses residuals that still
/// contain an unknown, which is exactly what a residual is.
pub fn residual_table(policy: &cedar_policy::Policy) -> Option<FactorTable> {
    let json = policy.to_json().ok()?;
    let scope_free = ["principal", "action", "resource"]
        .iter()
        .all(|k| json[*k]["op"] == "All");
    if !scope_free {
        return None;
    }
    json["conditions"]
        .as_array()?
        .iter()
        .try_fold(FactorTable::TRUE, |acc, c| {
            let body = json_table(&c["body"])?;
            match c["kind"].as_str()? {
                "when" => Some(acc.and(body)),
                "unless" => Some(acc.and(body.not())),
                _ => None,
            }
        })
}

fn is_unknown_factors(v: &serde_json::Value) -> bool {
    v["unknown"][0]["Value"] == "factors" && v["unknown"].as_array().is_some_and(|a| a.len() == 1)
}

fn json_factor(v: &serde_json::Value) -> Option<FactorTable> {
    // A name that is not a factor is never in a set of factors.
    let name = v["Value"].as_str()?;
    Some(
        Factor::from_str(name)
            .map(FactorTable::has)
            .unwrap_or(FactorTable::FALSE),
    )
}

/// A residual condition as a truth table, for the operators a monotone factor rule
/// uses; anything else is `None`.
fn json_table(e: &serde_json::Value) -> Option<FactorTable> {
    let obj = e.as_object()?;
    let (op, arg) = obj.iter().next().filter(|_| obj.len() == 1)?;
    let side = |k: &str| json_table(&arg[k]);
    Some(match op.as_str() {
        "Value" => FactorTable::constant(arg.as_bool()?),
        "!" => side("arg")?.not(),
        "&&" => side("left")?.and(side("right")?),
        "||" => side("left")?.or(side("right")?),
        "if-then-else" => {
            let c = side("if")?;
            c.and(side("then")?).or(c.not().and(side("else")?))
        }
        "isEmpty" if is_unknown_factors(&arg["arg"]) => FactorTable::has_exactly(FactorSet::EMPTY),
        "contains" if is_unknown_factors(&arg["left"]) => json_factor(&arg["right"])?,
        "containsAll" | "containsAny" if is_unknown_factors(&arg["left"]) => {
            let all = op == "containsAll";
            arg["right"]["Set"].as_array()?.iter().try_fold(
                FactorTable::constant(all),
                |acc, i| {
                    let t = json_factor(i)?;
                    Some(if all { acc.and(t) } else { acc.or(t) })
                },
            )?
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cedar_policy::Policy;

    fn pst(text: &str) -> pst::Policy {
        Policy::parse(None, text).unwrap().to_pst().unwrap()
    }

    #[test]
    fn scopes() {
        let p = pst(
            r#"permit(principal in Sekisho::Group::"tax", action in [Sekisho::Action::"logon", Sekisho::Action::"unlock"], resource in Sekisho::Tier::"lgwan");"#,
        );
        let s = scope_of(p.body());
        assert_eq!(s.principal, PrincipalScope::Group("tax".into()));
        assert_eq!(s.actions, Some(vec![Action::Logon, Action::Unlock]));
        assert_eq!(s.tier, Some(Tier::Lgwan));
        let p = pst(r#"forbid(principal, action, resource == Sekisho::Device::"d1");"#);
        assert_eq!(
            scope_of(p.body()),
            Scope {
                principal: PrincipalScope::Any,
                actions: None,
                tier: None
            }
        );
    }

    #[test]
    fn monotone_and_not() {
        let ok = [
            r#"permit(principal, action, resource) when { context.factors.containsAll(["card","password"]) || context.factors.contains("face") };"#,
            r#"forbid(principal, action, resource) unless { context.factors.containsAny(["card","face"]) };"#,
            r#"permit(principal, action, resource) when { !(context.hour > 22) && context.factors.contains("pin") };"#,
        ];
        for t in ok {
            assert!(monotonicity_issues(pst(t).body()).is_empty(), "{t}");
        }
        let bad = [
            r#"permit(principal, action, resource) when { !context.factors.contains("totp") };"#,
            r#"permit(principal, action, resource) unless { context.factors.contains("totp") };"#,
            r#"forbid(principal, action, resource) when { context.factors.contains("emergency_otp") };"#,
            r#"permit(principal, action, resource) when { context.factors == ["password"] };"#,
            r#"permit(principal, action, resource) when { if context.factors.contains("pin") then false else true };"#,
        ];
        for t in bad {
            assert!(!monotonicity_issues(pst(t).body()).is_empty(), "{t}");
        }
    }

    #[test]
    fn references() {
        let r = References::of([
            pst(
                r#"permit(principal, action, resource) when { resource.kind == "desktop" && principal has role };"#,
            ),
            pst(r#"permit(principal == Sekisho::User::"u1", action, resource);"#),
        ]);
        assert!(r.reads("kind") && r.reads("role") && !r.reads("cohort"));
        assert!(r.user_literal && !r.device_literal);
    }
}
