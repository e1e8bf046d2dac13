// Release gate: a commit becomes a release candidate when every job of the gate passes on it.
//
// Jenkins Job Builder includes this file verbatim in soc-pipeline-release-gate (jenkins/templates.yaml);
// JOB_PREFIX, AGENT_LABEL and GIT_URL are choices with a single value, fixed by the job's definition.
//
//   Commit      GIT_REF resolved to one commit: every job below builds that commit, not the branch's head
//               of the moment.
//   Build       JOB_PREFIX-build: the wheel and the documentation.
//   Verify      JOB_PREFIX-test and JOB_PREFIX-quality, side by side.
//   Acceptance  JOB_PREFIX-acceptance: the Gherkin features.
//   Validation  JOB_PREFIX-nightly-compare with CANDIDATE_REF = the commit: validation runs the commit's
//               release (candidate.yml), operations its own; a fresh clone, a day replayed through both,
//               soc compare. Any difference fails the gate (its report is that build's Comparison).
//   Candidate   JOB_PREFIX-deploy-production is started on the commit and not waited for: it checks the
//               commit against production and waits for a release manager's approval (a newer candidate
//               that is approved first aborts it).
// A job that fails fails the gate (and the stages after it do not run).

// Runs JOB_PREFIX-name on the gate's commit and waits for it.
void gateJob(String name) {
    build(job: "${params.JOB_PREFIX}-${name}", wait: true, propagate: true,
          parameters: [string(name: 'GIT_REF', value: env.GATE_COMMIT)])
}

pipeline {
    agent none
    options {
        timestamps()
        timeout(time: 8, unit: 'HOURS')
    }
    stages {
        stage('Commit') {
            agent { label params.AGENT_LABEL }
            steps {
                script {
                    def scmVars = checkout scmGit(branches: [[name: params.GIT_REF]],
                                                  userRemoteConfigs: [[url: params.GIT_URL]])
                    env.GATE_COMMIT = scmVars.GIT_COMMIT
                    currentBuild.description = env.GATE_COMMIT.take(12)
                }
            }
        }
        stage('Build') {
            steps {
                script {
                    gateJob('build')
                }
            }
        }
        stage('Verify') {
            parallel {
                stage('Test') {
                    steps {
                        script {
                            gateJob('test')
                        }
                    }
                }
                stage('Quality') {
                    steps {
                        script {
                            gateJob('quality')
                        }
                    }
                }
            }
        }
        stage('Acceptance') {
            steps {
                script {
                    gateJob('acceptance')
                }
            }
        }
        stage('Validation') {
            steps {
                build(job: "${params.JOB_PREFIX}-nightly-compare", wait: true, propagate: true,
                      parameters: [string(name: 'CANDIDATE_REF', value: env.GATE_COMMIT)])
            }
        }
        stage('Candidate') {
            steps {
                build(job: "${params.JOB_PREFIX}-deploy-production", wait: false,
                      parameters: [string(name: 'GIT_REF', value: env.GATE_COMMIT)])
            }
        }
    }
}
