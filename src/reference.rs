//! The reference policies and example city, built into the binary so `sekisho demo`
//! runs anywhere without the source tree.

use sekisho_policy_engine::{PolicyFile, PolicySources};

const SCHEMA: &str = include_str!("../policies/sekisho.cedarschema");
const FILES: [(&str, &str); 5] = [
    ("admin.cedar", include_str!("../policies/admin.cedar")),
    ("internet.cedar", include_str!("../policies/internet.cedar")),
    ("lgwan.cedar", include_str!("../policies/lgwan.cedar")),
    ("mynumber.cedar", include_str!("../policies/mynumber.cedar")),
    ("telework.cedar", include_str!("../policies/telework.cedar")),
];
/// `policies/examples/entities.json`.
pub const ENTITIES_JSON: &str = include_str!("../policies/examples/entities.json");

pub fn policies() -> PolicySources {
    PolicySources::new(
        SCHEMA.to_string(),
        FILES
            .iter()
            .map(|(n, t)| PolicyFile {
                name: n.to_string(),
                text: t.to_string(),
            })
            .collect(),
    )
}
